/*
** units.h: the units of the core, as module.c loads them. Each *_open(L)
** adds its functions (and registers its classes) into the table that is its
** argument: the module table, core.*.
*/
#ifndef CMPXCHG_UNITS_H
#define CMPXCHG_UNITS_H

#include "lua.h"

#include "compat.h"

#pragma GCC visibility push(hidden)

int keys_open (lua_State *L);       /* keys.c: fold_key, key_problem, url_escape */
int jsonpick_open (lua_State *L);   /* jsonpick.c: json_fields, json_texts */
int storedir_open (lua_State *L);   /* storedir.c: state_file, dir_problem */
int embedded_open (lua_State *L);   /* embedded.c: embedded_open, cmpxchg.Embedded */
int http_open (lua_State *L);       /* http.c: http_new, cmpxchg.Http */
int stream_open (lua_State *L);     /* stream.c: cmpxchg.Stream (http:stream) */
int renew_open (lua_State *L);      /* renew.c: renewer_start, cmpxchg.Renewer/Renewal */

#pragma GCC visibility pop

/* the module's entry point, and its only exported symbol (module.c) */
LUAMOD_API int luaopen_cmpxchg_core (lua_State *L);

#endif
