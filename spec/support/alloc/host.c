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
** A last pass fails SQLite's allocations instead of Lua's. Built with ASan,
** UBSan and LeakSanitizer, so a crash, an invalid access or a leak on any
** of those paths fails the run too.
**
**   host DRIVER CPATH [ARGS...]: DRIVER gets ARGS as `...`
*/

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

typedef struct Limit {
    int armed;
    int sqlite;                 /* SQLite's allocations fail, not Lua's */
    unsigned long burst;        /* how many fail from the Nth on; 0: all */
    unsigned long count;        /* allocations since armed */
    unsigned long fail_at;      /* the first one that fails */
    unsigned long failures;     /* allocations refused since armed */
} Limit;

/* whether the allocation being made fails; `sqlite` says whose it is */
static int fails (Limit *m, int sqlite) {
    if (m->armed && m->sqlite == sqlite && ++m->count >= m->fail_at &&
        (m->burst == 0 || m->failures < m->burst)) {
        m->failures++;
        return 1;
    }
    return 0;
}

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
    if ((ptr == NULL || nsize > osize) && fails(m, 0))
        return NULL;
    return realloc(ptr, nsize);
}

/*
** SQLite's allocator, wrapped: its functions take no user data, so the
** limit is a global of this program.
*/
static sqlite3_mem_methods sqlite_mem;
static Limit *sqlite_limit;

static void *sq_malloc (int n) {
    return fails(sqlite_limit, 1) ? NULL : sqlite_mem.xMalloc(n);
}

static void *sq_realloc (void *p, int n) {
    if ((p == NULL || n > sqlite_mem.xSize(p)) && fails(sqlite_limit, 1))
        return NULL;
    return sqlite_mem.xRealloc(p, n);
}

static void sq_free (void *p) { sqlite_mem.xFree(p); }
static int sq_size (void *p) { return sqlite_mem.xSize(p); }
static int sq_roundup (int n) { return sqlite_mem.xRoundup(n); }
static int sq_init (void *ud) { return sqlite_mem.xInit(ud); }
static void sq_shutdown (void *ud) { sqlite_mem.xShutdown(ud); }

/* before SQLite is first used: every library that loads it shares this */
static void limit_sqlite (Limit *m) {
    sqlite3_mem_methods wrapped;
    sqlite_limit = m;
    if (sqlite3_config(SQLITE_CONFIG_GETMALLOC, &sqlite_mem) != SQLITE_OK) abort();
    wrapped = sqlite_mem;
    wrapped.xMalloc = sq_malloc;
    wrapped.xRealloc = sq_realloc;
    wrapped.xFree = sq_free;
    wrapped.xSize = sq_size;
    wrapped.xRoundup = sq_roundup;
    wrapped.xInit = sq_init;
    wrapped.xShutdown = sq_shutdown;
    if (sqlite3_config(SQLITE_CONFIG_MALLOC, &wrapped) != SQLITE_OK) abort();
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

typedef struct Pass {
    const char *name;
    int sqlite;
    unsigned long burst;
} Pass;

/*
** Every allocation from the Nth on fails: the memory error unwinds
** whatever was under way. Only the Nth fails: Lua runs an emergency full
** collection there and tries again, which frees at that point whatever
** the code holds without a reference. The Nth and that second try fail,
** and later ones work: the memory error meets code that goes on after it
** (a pcall that takes it for another error). SQLite's allocations from the
** Nth on fail: its errors on every path of the store.
*/
static const Pass passes[] = {
    {"Nth on", 0, 0},
    {"Nth only", 0, 1},
    {"Nth twice", 0, 2},
    {"SQLite Nth on", 1, 0},
};

#define N_PASSES    ((int)(sizeof passes / sizeof passes[0]))

/*
** Runs operation `op` at every failure point: returns how many there were.
** The results (or the error) of each run go to driver.check(op, pass, n,
** ok, met, ...), `met` telling whether the run met an injected failure.
*/
static unsigned long check_operation (lua_State *L, Limit *m, const char *op,
                                      const Pass *pass) {
    unsigned long n;
    m->sqlite = pass->sqlite;
    m->burst = pass->burst;
    for (n = 1; ; n++) {
        int top = lua_gettop(L), status, met;
        lua_getfield(L, 1, "check");
        lua_pushstring(L, op);
        lua_pushstring(L, pass->name);
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
        lua_rotate(L, top + 4, 2);      /* check, op, pass, ok, met, results... */
        lua_pushinteger(L, (lua_Integer)n);
        lua_insert(L, top + 4);         /* check, op, pass, n, ok, met, results... */
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
    Limit m = {0, 0, 0, 0, 0, 0};
    lua_State *L;
    unsigned long total = 0;
    double start = now();
    int i, p, nops;
    if (argc < 3) {
        fprintf(stderr, "usage: %s DRIVER CPATH [ARGS...]\n", argv[0]);
        return 2;
    }
    limit_sqlite(&m);
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
    for (p = 0; p < N_PASSES; p++) {
        for (i = 1; i <= nops; i++) {
            double t0 = now();
            lua_geti(L, 2, i);                  /* the operation's name */
            lua_pushvalue(L, -1);
            lua_pushstring(L, passes[p].name);
            call_driver(L, "wants", 2, 1);      /* wants(op, pass) */
            if (lua_toboolean(L, -1)) {
                const char *op = lua_tostring(L, -2);
                unsigned long points = check_operation(L, &m, op, &passes[p]);
                total += points;
                printf("%-16s %-14s %5lu failure points  %.2f s\n", op, passes[p].name,
                       points, now() - t0);
                fflush(stdout);
            }
            lua_pop(L, 2);
        }
    }
    lua_settop(L, 1);
    call_driver(L, "finish", 0, 0);
    pin_modules(L);
    lua_close(L);
    printf("alloc-check: %d operations in %d passes, %lu failure points, all clean, "
           "in %.1f s\n", nops, N_PASSES, total, now() - start);
    return 0;
}
