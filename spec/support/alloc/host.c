/*
** host.c: the allocation-failure checker (make alloc-check). A Lua 5.4
** host whose allocator, once armed at N, fails the Nth allocation and
** every later one until the operation returns (Lua's own test suite does
** the same with T.alloccount), runs each operation of a driver script
** (spec/support/alloc/driver.lua) for N = 1, 2, ... until the operation
** completes without meeting a failure. After each run, with the allocator
** working again, the driver checks what came out: the operation's normal
** result or a clean "not enough memory" error, the store unchanged or
** changed exactly as the operation said, and the store still fully usable.
** Built with ASan, UBSan and LeakSanitizer, so a crash, an invalid access
** or a leak on any of those paths fails the run too.
**
**   host DRIVER CPATH [ARGS...]: DRIVER gets ARGS as `...`
*/

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

typedef struct Limit {
    int armed;
    unsigned long burst;        /* how many fail from the Nth on; 0: all */
    unsigned long count;        /* allocations since armed */
    unsigned long fail_at;      /* the first one that fails */
    unsigned long failures;     /* allocations refused since armed */
} Limit;

/*
** Frees and shrinks always work: Lua assumes that an allocator never fails
** when the block does not grow. A NULL `ptr` is a new block (`osize` then
** holds the kind of object, not a size).
*/
static void *limited_alloc (void *ud, void *ptr, size_t osize, size_t nsize) {
    Limit *m = (Limit *)ud;
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    if (m->armed && (ptr == NULL || nsize > osize) && ++m->count >= m->fail_at &&
        (m->burst == 0 || m->failures < m->burst)) {
        m->failures++;
        return NULL;
    }
    return realloc(ptr, nsize);
}

static double now (void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* a failure is reported as it happens: no leak report of the state left open */
static void fail (void) {
    fflush(stdout);
    _Exit(1);
}

static int traceback (lua_State *L) {
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
}

/* calls driver[name](...) with the `nargs` values on top, unarmed; dies on error */
static void call_driver (lua_State *L, const char *name, int nargs, int nresults) {
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, traceback);
    lua_getfield(L, 1, name);
    lua_rotate(L, base + 1, 2);
    if (lua_pcall(L, nargs, nresults, base + 1) != LUA_OK) {
        fprintf(stderr, "alloc-check: %s\n", lua_tostring(L, -1));
        fail();
    }
    lua_remove(L, base + 1);
}

/*
** Runs operation `op` at every failure point: returns how many there were.
** The results (or the error) of each run go to driver.check(op, n, ok,
** met, ...), `met` telling whether the run met an injected failure.
*/
static unsigned long check_operation (lua_State *L, Limit *m, const char *op) {
    unsigned long n;
    for (n = 1; ; n++) {
        int top = lua_gettop(L), status, met;
        lua_getfield(L, 1, "check");
        lua_pushstring(L, op);
        lua_getfield(L, 1, "run");
        lua_pushstring(L, op);
        m->count = m->failures = 0;
        m->fail_at = n;
        m->armed = 1;
        status = lua_pcall(L, 1, LUA_MULTRET, 0);
        m->armed = 0;
        met = m->failures > 0;
        lua_pushboolean(L, status == LUA_OK);
        lua_pushboolean(L, met);
        lua_rotate(L, top + 3, 2);      /* check, op, ok, met, results... */
        lua_pushinteger(L, (lua_Integer)n);
        lua_insert(L, top + 3);         /* check, op, n, ok, met, results... */
        {
            int nargs = lua_gettop(L) - top - 1;
            lua_pushcfunction(L, traceback);
            lua_insert(L, top + 1);
            if (lua_pcall(L, nargs, 0, top + 1) != LUA_OK) {
                fprintf(stderr, "alloc-check: %s at failure point %lu: %s\n",
                        op, n, lua_tostring(L, -1));
                fail();
            }
            lua_settop(L, top);
        }
        if (!met)
            return n - 1;
    }
}

/*
** Keeps the C modules the state loaded mapped after lua_close unloads them,
** so that LeakSanitizer, which reports at exit, can name their functions.
*/
static void pin_modules (lua_State *L) {
    lua_getfield(L, LUA_REGISTRYINDEX, "_CLIBS");
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        if (lua_type(L, -2) == LUA_TSTRING)
            dlopen(lua_tostring(L, -2), RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

int main (int argc, char **argv) {
    Limit m = {0, 0, 0, 0, 0};
    lua_State *L;
    unsigned long total = 0;
    double start = now();
    int i, nops;
    if (argc < 3) {
        fprintf(stderr, "usage: %s DRIVER CPATH [ARGS...]\n", argv[0]);
        return 2;
    }
    L = lua_newstate(limited_alloc, &m);
    if (L == NULL) return 1;
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_pushstring(L, "./lua/?.lua;./lua/?/init.lua;./spec/?.lua");
    lua_setfield(L, -2, "path");
    lua_getfield(L, -1, "cpath");
    lua_pushfstring(L, "%s;%s", argv[2], lua_tostring(L, -1));
    lua_setfield(L, -3, "cpath");
    lua_pop(L, 1);
    lua_pop(L, 1);
    if (luaL_loadfile(L, argv[1]) != LUA_OK) {
        fprintf(stderr, "alloc-check: %s\n", lua_tostring(L, -1));
        fail();
    }
    for (i = 3; i < argc; i++)
        lua_pushstring(L, argv[i]);
    lua_pushcfunction(L, traceback);
    lua_insert(L, 1);
    if (lua_pcall(L, argc - 3, 1, 1) != LUA_OK || !lua_istable(L, -1)) {
        fprintf(stderr, "alloc-check: %s: %s\n", argv[1],
                lua_isstring(L, -1) ? lua_tostring(L, -1) : "did not return a table");
        fail();
    }
    lua_replace(L, 1);                  /* 1: the driver */
    lua_getfield(L, 1, "operations");
    nops = (int)luaL_len(L, -1);
    /*
    ** Three passes. Every allocation from the Nth on fails: the memory
    ** error unwinds whatever was under way. Only the Nth fails: Lua runs an
    ** emergency full collection there and tries again, which frees at that
    ** point whatever the code holds without a reference. The Nth and that
    ** second try fail, and later ones work: the memory error meets code that
    ** goes on after it (a pcall that takes it for another error).
    */
    for (m.burst = 0; m.burst <= 2; m.burst++) {
        for (i = 1; i <= nops; i++) {
            const char *op;
            unsigned long points;
            double t0 = now();
            lua_geti(L, 2, i);
            op = lua_tostring(L, -1);
            points = check_operation(L, &m, op);
            total += points;
            static const char *const pass[] = {"Nth on", "Nth only", "Nth twice"};
            printf("%-16s %-10s %5lu failure points  %.2f s\n", op, pass[m.burst],
                   points, now() - t0);
            fflush(stdout);
            lua_pop(L, 1);
        }
    }
    lua_settop(L, 1);
    call_driver(L, "finish", 0, 0);
    pin_modules(L);
    lua_close(L);
    printf("alloc-check: %d operations in 3 passes, %lu failure points, all clean, "
           "in %.1f s\n", nops, total, now() - start);
    return 0;
}
