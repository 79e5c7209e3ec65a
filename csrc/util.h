/*
** util.h: the core's leaf helpers, which every other unit may use and which
** use no other unit: the error contract, clocks, C#-compatible dates,
** base64, random ids, class registration. Hidden from the shared object's
** exports (only luaopen_cmpxchg_core is public), as luasocket hides its own.
*/
#ifndef CMPXCHG_UTIL_H
#define CMPXCHG_UTIL_H

#include <stddef.h>

#include "lua.h"
#include "lauxlib.h"

#include "compat.h"

#pragma GCC visibility push(hidden)

/* pushes nil, "<code>: <detail>", "<code>" and returns 3: the error contract */
int cx_push_error (lua_State *L, const char *code, const char *fmt, ...);

/* wall-clock time in seconds since the epoch, with sub-second precision */
double cx_wall_time (void);

/* seconds from an arbitrary start that never jumps (CLOCK_MONOTONIC) */
double cx_mono_time (void);

/* epoch seconds as C#'s DateTime.UtcNow writes them: 2024-01-02T03:04:05.1234567Z */
void cx_format_time (double t, char out[40]);

/* an ISO 8601 date-time into epoch seconds: 0, or -1 when `s` is not one */
int cx_parse_time (const char *s, size_t len, double *t);

/* base64 of 1 to 3 bytes into out[4], padded with '=' (standard alphabet) */
void cx_b64_quad (const unsigned char *s, size_t n, char out[4]);

/* the value of base64 digit `c` (standard alphabet), or -1 */
int cx_b64_value (int c);

/* a random (version 4) UUID into `out`; -1 when no random bytes */
int cx_uuid (char out[37]);

/*
** Registers class `name` (a dotted __name, liolib's way): its metatable gets
** `meta` (the __* entries) and an __index table of `methods`.
*/
void cx_newclass (lua_State *L, const char *name, const luaL_Reg *meta,
                  const luaL_Reg *methods);

#pragma GCC visibility pop

#endif
