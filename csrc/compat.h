/*
** compat.h: every Lua-version difference of the C core, in one place.
** The core is written against the Lua 5.4 API; older APIs (5.1, LuaJIT)
** get the few functions it uses from here.
*/
#ifndef CMPXCHG_COMPAT_H
#define CMPXCHG_COMPAT_H

#include "lua.h"
#include "lauxlib.h"

#if LUA_VERSION_NUM < 502

#define lua_rawlen(L, i)    lua_objlen(L, (i))

/*
** PUC Lua 5.1 lacks these 5.2 functions; LuaJIT 2.1 has them (its lauxlib.h
** then defines luaL_newlib, which tells the two apart). static inline: a file
** that does not use one gets no unused-function warning.
*/
#ifndef luaL_newlib

#define luaL_newlib(L, l)   (lua_newtable(L), luaL_register(L, NULL, l))

static inline void luaL_setfuncs (lua_State *L, const luaL_Reg *l, int nup) {
    luaL_checkstack(L, nup, "too many upvalues");
    for (; l->name != NULL; l++) {
        int i;
        for (i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}

static inline void *luaL_testudata (lua_State *L, int ud, const char *tname) {
    void *p = lua_touserdata(L, ud);
    if (p != NULL && lua_getmetatable(L, ud)) {
        luaL_getmetatable(L, tname);
        if (!lua_rawequal(L, -1, -2))
            p = NULL;
        lua_pop(L, 2);
        return p;
    }
    return NULL;
}

#define luaL_setmetatable(L, tname) \
    (luaL_getmetatable(L, tname), lua_setmetatable(L, -2))

#endif

#endif

#ifndef LUAMOD_API
#define LUAMOD_API LUALIB_API

#endif

#if LUA_VERSION_NUM < 503
/*
** Before 5.3 every number is a double: an integer is one with no fraction
** inside lua_Integer's range (checked first: converting NaN or an
** out-of-range double to an integer is undefined behaviour).
*/
static inline int cx_isinteger (lua_State *L, int i) {
    lua_Number n;
    if (lua_type(L, i) != LUA_TNUMBER)
        return 0;
    n = lua_tonumber(L, i);
    return n >= -9223372036854775808.0 && n < 9223372036854775808.0 &&
           (lua_Number)(lua_Integer)n == n;
}
#else
#define cx_isinteger(L, i)  lua_isinteger(L, i)
#endif

/* userdata with no user values: one argument on 5.4, none before */
#if LUA_VERSION_NUM >= 504
#define cx_newuserdata(L, sz)   lua_newuserdatauv(L, sz, 0)
#else
#define cx_newuserdata(L, sz)   lua_newuserdata(L, sz)
#endif

#endif
