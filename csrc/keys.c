/*
** keys.c: compare-exchange keys. RavenDB compares keys with
** ToLowerInvariant; we fold the same way for the scripts most keys are
** written in (ASCII, Latin-1, Latin Extended-A, Greek, Cyrillic); code points
** outside those blocks compare exactly. Every mapping used keeps the UTF-8
** length, so the folded key has the byte length of the original and the
** 512-byte limit means the same thing before and after folding. Also the
** key checks every put, get and delete makes, and their escaping in URLs.
*/

#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "compat.h"
#include "keys.h"
#include "units.h"

/* lower-case of one code point, for the blocks above; others unchanged */
static unsigned long fold_codepoint (unsigned long c) {
    if (c >= 'A' && c <= 'Z')
        return c + 32;
    if (c < 0x80)
        return c;
    if (c >= 0xC0 && c <= 0xDE && c != 0xD7)                /* Latin-1 */
        return c + 32;
    if (c >= 0x100 && c <= 0x137 && (c & 1) == 0)           /* Latin Ext-A */
        return c == 0x130 ? c : c + 1;      /* U+0130 becomes "i" + dot: keep */
    if (c >= 0x139 && c <= 0x148 && (c & 1) == 1)
        return c + 1;
    if (c >= 0x14A && c <= 0x177 && (c & 1) == 0)
        return c + 1;
    if (c == 0x178)
        return 0xFF;
    if (c == 0x179 || c == 0x17B || c == 0x17D)
        return c + 1;
    if (c >= 0x391 && c <= 0x3AB && c != 0x3A2)             /* Greek */
        return c + 32;
    if (c == 0x386) return 0x3AC;                           /* with tonos */
    if (c >= 0x388 && c <= 0x38A) return c + 37;
    if (c == 0x38C) return 0x3CC;
    if (c == 0x38E || c == 0x38F) return c + 63;
    if (c >= 0x410 && c <= 0x42F)                           /* Cyrillic */
        return c + 32;
    if (c >= 0x400 && c <= 0x40F)
        return c + 80;
    if (c == 0x4C0)
        return 0x4CF;
    if (c >= 0x4C1 && c <= 0x4CD && (c & 1) == 1)
        return c + 1;
    if (c >= 0x460 && c <= 0x4FF && (c & 1) == 0 &&
        !(c >= 0x482 && c <= 0x489) && !(c >= 0x4C0 && c <= 0x4CF))
        return c + 1;
    return c;
}

/* decodes one UTF-8 sequence; returns its length, 0 when invalid */
static size_t decode_utf8 (const unsigned char *s, size_t len, unsigned long *cp) {
    unsigned long c = s[0];
    size_t n, i;
    unsigned long min;
    if (c < 0x80) { *cp = c; return 1; }
    else if (c >= 0xC2 && c <= 0xDF) { n = 2; c &= 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { n = 3; c &= 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { n = 4; c &= 0x07; min = 0x10000; }
    else return 0;
    if (n > len) return 0;
    for (i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;   /* overlong, out of range, or a surrogate */
    *cp = c;
    return n;
}

static void encode_utf8 (unsigned long c, size_t n, char *out) {
    switch (n) {
        case 1: out[0] = (char)c; break;
        case 2: out[0] = (char)(0xC0 | (c >> 6));
                out[1] = (char)(0x80 | (c & 0x3F)); break;
        default: break;     /* 3- and 4-byte code points are never folded */
    }
}

int cx_key_fold (const char *s, size_t len, char *out) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned long c, lower;
        size_t n = decode_utf8(p + i, len - i, &c);
        if (n == 0)
            return -1;
        lower = fold_codepoint(c);
        if (lower == c || n > 2) {
            size_t k;
            for (k = 0; k < n; k++)
                out[i + k] = s[i + k];
        }
        else
            encode_utf8(lower, n, out + i);
        i += n;
    }
    return 0;
}

/*
** {======================================================
** The Lua face: core.fold_key, core.key_problem, core.url_escape
** =======================================================
*/

/*
** core.fold_key(key) -> the key lower-cased as RavenDB compares it, or nil and
** a message when the key is longer than 512 bytes, not valid UTF-8 or holds a
** NUL byte (no key does: it is a prefix no key can start with).
*/
static int core_fold_key (lua_State *L) {
    size_t len;
    const char *key = luaL_checklstring(L, 1, &len);
    char out[CX_MAX_KEY_BYTES];
    const char *problem = NULL;
    if (len > CX_MAX_KEY_BYTES)
        problem = "longer than 512 bytes";
    else if (cx_key_fold(key, len, out) != 0)
        problem = "not valid UTF-8";
    else if (memchr(key, '\0', len) != NULL)
        problem = "a string with a NUL byte";
    if (problem != NULL) {
        lua_pushnil(L);
        lua_pushstring(L, problem);
        return 2;
    }
    lua_pushlstring(L, out, len);
    return 1;
}

/*
** The length of the white-space character at `s` (n bytes left), or 0: .NET's
** char.IsWhiteSpace, with which RavenDB judges a key blank (U+0009-U+000D,
** U+0020, U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F,
** U+205F, U+3000), so that a key of no-break spaces is refused here as it
** would be there. ravendb.lua's `blank` (for prefixes) uses the same set.
*/
static size_t white_space (const unsigned char *s, size_t n) {
    if (s[0] == ' ' || (s[0] >= '\t' && s[0] <= '\r')) return 1;
    if (n >= 2 && s[0] == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0)) return 2;
    if (n < 3) return 0;
    if (s[0] == 0xE1 && s[1] == 0x9A && s[2] == 0x80) return 3;
    if (s[0] == 0xE2 && s[1] == 0x80 &&
        (s[2] <= 0x8A || s[2] == 0xA8 || s[2] == 0xA9 || s[2] == 0xAF)) return 3;
    if (s[0] == 0xE2 && s[1] == 0x81 && s[2] == 0x9F) return 3;
    if (s[0] == 0xE3 && s[1] == 0x80 && s[2] == 0x80) return 3;
    return 0;
}

/*
** core.key_problem(key) -> nothing when the string `key` can be a
** compare-exchange key, else why not: blank, holding a NUL byte, longer than
** 512 bytes, not UTF-8, or in RavenDB's reserved "rvn-atomic/" space
** (compared folded).
** One pass in C: every put, get and delete checks its key.
*/
static int core_key_problem (lua_State *L) {
    static const char reserved[] = "rvn-atomic/";
    size_t len, i = 0, w;
    const char *key = luaL_checklstring(L, 1, &len);
    char folded[CX_MAX_KEY_BYTES];
    while (i < len && (w = white_space((const unsigned char *)key + i, len - i)) > 0)
        i += w;
    if (i == len) {
        lua_pushliteral(L, "key must not be empty or blank");
    } else if (memchr(key, '\0', len) != NULL) {
        /* stores and servers cut keys at NUL: "a\0b" would be stored as "a" */
        lua_pushliteral(L, "key must not contain a NUL byte");
    } else if (len > CX_MAX_KEY_BYTES) {
        lua_pushfstring(L, "key is %d bytes, the limit is %d", (int)len, CX_MAX_KEY_BYTES);
    } else if (cx_key_fold(key, len, folded) != 0) {
        lua_pushliteral(L, "key is not valid UTF-8");
    } else if (len >= sizeof reserved - 1 && memcmp(folded, reserved, sizeof reserved - 1) == 0) {
        lua_pushliteral(L, "keys starting with 'rvn-atomic/' are reserved for RavenDB's "
                           "atomic guards");
    } else {
        return 0;
    }
    return 1;
}

/*
** core.url_escape(s) -> `s` with every byte outside RFC 3986's unreserved
** set (ALPHA DIGIT - . _ ~) percent-encoded, so that "+" and "/" survive
** ASP.NET's query decoding; `s` itself when nothing needs escaping.
*/
static int core_url_escape (lua_State *L) {
    static const char hex[] = "0123456789ABCDEF";
    size_t len, i;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    luaL_Buffer b;
#define UNRESERVED(c) (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z') || \
                       ((c) >= '0' && (c) <= '9') || (c) == '-' || (c) == '.' || \
                       (c) == '_' || (c) == '~')
    for (i = 0; i < len && UNRESERVED(s[i]); i++) {}
    if (i == len) {
        lua_settop(L, 1);
        return 1;
    }
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, (const char *)s, i);
    for (; i < len; i++) {
        if (UNRESERVED(s[i])) {
            luaL_addchar(&b, (char)s[i]);
        } else {
            luaL_addchar(&b, '%');
            luaL_addchar(&b, hex[s[i] >> 4]);
            luaL_addchar(&b, hex[s[i] & 15]);
        }
    }
#undef UNRESERVED
    luaL_pushresult(&b);
    return 1;
}

static const luaL_Reg key_functions[] = {
    {"fold_key", core_fold_key},
    {"key_problem", core_key_problem},
    {"url_escape", core_url_escape},
    {NULL, NULL}
};

int keys_open (lua_State *L) {
    luaL_setfuncs(L, key_functions, 0);
    lua_pushinteger(L, CX_MAX_KEY_BYTES);
    lua_setfield(L, -2, "MAX_KEY_BYTES");
    return 0;
}

/* }====================================================== */
