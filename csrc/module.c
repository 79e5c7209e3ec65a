/*
** module.c: luaopen_cmpxchg_core. The core.* functions the Lua layer cannot
** have portably (clocks, sleeping, random ids, C#-compatible dates, base64,
** process identity), then each unit's own functions and classes, added by a
** loop over the units (luasocket's mod[]). Only this file knows every unit;
** the units use util.c and, the embedded store, keys.c.
*/

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lua.h"
#include "lauxlib.h"

#include "compat.h"
#include "units.h"
#include "util.h"

/*
** core.monotime() -> seconds from an arbitrary start that never jumps; lease
** lengths are measured with it so a wall-clock step cannot stretch a lease.
*/
static int core_monotime (lua_State *L) {
    lua_pushnumber(L, (lua_Number)cx_mono_time());
    return 1;
}

static int core_time (lua_State *L) {
    lua_pushnumber(L, (lua_Number)cx_wall_time());
    return 1;
}

/*
** core.sleep(seconds): blocks the calling OS thread, so the Lua layer never
** uses it inside nginx (ngx.sleep there). Restarts after signals so that the
** whole interval is slept.
*/
static int core_sleep (lua_State *L) {
    lua_Number s = luaL_checknumber(L, 1);
    struct timespec req, rem;
    luaL_argcheck(L, s >= 0 && s < 1e9, 1, "seconds out of range");
    req.tv_sec = (time_t)s;
    req.tv_nsec = (long)((s - (lua_Number)req.tv_sec) * 1e9);
    while (nanosleep(&req, &rem) != 0 && errno == EINTR)
        req = rem;
    return 0;
}

/* core.uuid() -> a random (version 4) UUID, lower-case, 36 characters */
static int core_uuid (lua_State *L) {
    char s[37];
    if (cx_uuid(s) != 0)
        return luaL_error(L, "cannot read random bytes: %s", strerror(errno));
    lua_pushlstring(L, s, 36);
    return 1;
}

static int core_format_time (lua_State *L) {
    lua_Number t = luaL_checknumber(L, 1);
    char buf[40];
    luaL_argcheck(L, t >= 0 && t < 253402300800.0, 1, "time out of range");
    cx_format_time((double)t, buf);
    lua_pushstring(L, buf);
    return 1;
}

/*
** core.parse_time(s) -> epoch seconds, or nil when `s` is not an ISO 8601
** date-time (see cx_parse_time for what is taken).
*/
static int core_parse_time (lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    double t;
    if (cx_parse_time(s, len, &t) != 0) lua_pushnil(L);
    else lua_pushnumber(L, (lua_Number)t);
    return 1;
}

static int core_pid (lua_State *L) {
    lua_pushinteger(L, (lua_Integer)getpid());
    return 1;
}

static int core_hostname (lua_State *L) {
    char name[256];
    if (gethostname(name, sizeof name) != 0)
        return luaL_error(L, "cannot read the host name: %s", strerror(errno));
    name[sizeof name - 1] = '\0';
    lua_pushstring(L, name);
    return 1;
}

/* core.b64encode(s) -> standard base64 with padding, as etcd's gateway wants */
static int core_b64encode (lua_State *L) {
    size_t len, i;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (i = 0; i < len; i += 3) {
        char quad[4];
        cx_b64_quad(s + i, len - i < 3 ? len - i : 3, quad);
        luaL_addlstring(&b, quad, 4);
    }
    luaL_pushresult(&b);
    return 1;
}

/* core.b64decode(s) -> bytes, or nil when `s` is not padded standard base64 */
static int core_b64decode (lua_State *L) {
    size_t len, i;
    const char *s = luaL_checklstring(L, 1, &len);
    luaL_Buffer b;
    if (len % 4 != 0) { lua_pushnil(L); return 1; }
    luaL_buffinit(L, &b);
    for (i = 0; i < len; i += 4) {
        int a = cx_b64_value(s[i]), c1 = cx_b64_value(s[i + 1]);
        int pad2 = s[i + 2] == '=', pad3 = s[i + 3] == '=';
        int c2 = pad2 ? 0 : cx_b64_value(s[i + 2]), c3 = pad3 ? 0 : cx_b64_value(s[i + 3]);
        unsigned long v;
        if (a < 0 || c1 < 0 || c2 < 0 || c3 < 0 || (pad2 && !pad3) ||
            ((pad2 || pad3) && i + 4 != len)) {
            lua_pushnil(L);
            return 1;
        }
        v = ((unsigned long)a << 18) | ((unsigned long)c1 << 12) |
            ((unsigned long)c2 << 6) | (unsigned long)c3;
        luaL_addchar(&b, (char)((v >> 16) & 0xFF));
        if (!pad2) luaL_addchar(&b, (char)((v >> 8) & 0xFF));
        if (!pad3) luaL_addchar(&b, (char)(v & 0xFF));
    }
    luaL_pushresult(&b);
    return 1;
}

static const luaL_Reg core_functions[] = {
    {"monotime", core_monotime},
    {"time", core_time},
    {"sleep", core_sleep},
    {"uuid", core_uuid},
    {"format_time", core_format_time},
    {"parse_time", core_parse_time},
    {"pid", core_pid},
    {"hostname", core_hostname},
    {"b64encode", core_b64encode},
    {"b64decode", core_b64decode},
    {NULL, NULL}
};

/* each unit adds its functions and classes to the module table */
static const lua_CFunction units[] = {
    keys_open, jsonpick_open, storedir_open, embedded_open, http_open, stream_open, renew_open,
    NULL
};

LUAMOD_API int luaopen_cmpxchg_core (lua_State *L) {
    int i;
    luaL_newlib(L, core_functions);
    for (i = 0; units[i] != NULL; i++) {
        lua_pushcfunction(L, units[i]);
        lua_pushvalue(L, -2);
        lua_call(L, 1, 0);
    }
    return 1;
}
