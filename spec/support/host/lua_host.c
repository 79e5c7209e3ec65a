/*
** lua_host.c: a minimal standalone Lua 5.4 for the sanitizer runs that
** cannot preload their runtime. ThreadSanitizer's runtime, preloaded into
** every process, crashes /bin/sh (and so io.popen); built into this host
** instead, it watches only the interpreter that runs the specs, and the
** children it starts run plain.
**   lua_host SCRIPT [ARGS...]  -- runs SCRIPT with `arg` set as lua.c sets it
*/
#include <stdio.h>
#include <stdlib.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

static int report (lua_State *L, int status) {
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        fprintf(stderr, "lua_host: %s\n", msg ? msg : "(error object is not a string)");
        lua_pop(L, 1);
    }
    return status;
}

static int traceback (lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
    return 1;
}

int main (int argc, char **argv) {
    lua_State *L;
    int i, status;
    if (argc < 2) {
        fprintf(stderr, "usage: %s SCRIPT [ARGS...]\n", argv[0]);
        return 2;
    }
    L = luaL_newstate();
    if (L == NULL) return 1;
    luaL_openlibs(L);
    lua_createtable(L, argc - 2, 2);
    for (i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - 1);      /* arg[0] = SCRIPT, arg[-1] = this host */
    }
    lua_setglobal(L, "arg");
    lua_pushcfunction(L, traceback);
    status = luaL_loadfile(L, argv[1]);
    if (status == LUA_OK) {
        for (i = 2; i < argc; i++) lua_pushstring(L, argv[i]);
        status = lua_pcall(L, argc - 2, 0, 1);
    }
    status = report(L, status);
    lua_close(L);
    return status == LUA_OK ? 0 : 1;
}
