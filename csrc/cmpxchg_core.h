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

/* epoch seconds as C#'s DateTime.UtcNow writes them: 2024-01-02T03:04:05.1234567Z */
void cx_format_time (double t, char out[40]);

/* base64 of 1 to 3 bytes into out[4], padded with '=' (standard alphabet) */
void cx_b64_quad (const unsigned char *s, size_t n, char out[4]);

/* a random (version 4) UUID into `out`; -1 when no random bytes */
int cx_uuid (char out[37]);

/* the libcurl transport: core.http_new, and its metatable */
int cx_http_new (lua_State *L);
void cx_http_register (lua_State *L);
void cx_http_global_init (void);      /* once per process, from the Lua thread */

/* the renewal thread: core.renewer_start, and its metatable */
int cx_renewer_start (lua_State *L);
void cx_renewer_register (lua_State *L);

/* where a store file may live (storedir.c): core.state_file, core.dir_problem */
int cx_state_file (lua_State *L);
int cx_dir_problem (lua_State *L);

/* the module's entry point */
LUAMOD_API int luaopen_cmpxchg_core (lua_State *L);

#endif
