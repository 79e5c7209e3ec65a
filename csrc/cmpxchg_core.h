/*
** cmpxchg_core.h: what the core's C files share.
*/
#ifndef CMPXCHG_CORE_H
#define CMPXCHG_CORE_H

#include "lua.h"
#include "lauxlib.h"

#include "compat.h"

/* pushes nil, "<code>: <detail>", "<code>" and returns 3: the error contract */
int cx_push_error (lua_State *L, const char *code, const char *fmt, ...);

/* wall-clock time in seconds since the epoch, with sub-second precision */
double cx_wall_time (void);

/* registers the embedded store's metatable and leaves its `open` on the stack */
int cx_embedded_open (lua_State *L);
void cx_embedded_register (lua_State *L);

/* the libcurl transport: core.http_new, and its metatable */
int cx_http_new (lua_State *L);
void cx_http_register (lua_State *L);

/* the module's entry point */
LUAMOD_API int luaopen_cmpxchg_core (lua_State *L);

#endif
