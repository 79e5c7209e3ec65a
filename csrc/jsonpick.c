/*
** jsonpick.c: values picked out of JSON text by a dotted path, without
** decoding the rest. A server's reply is mostly what we do not need (etcd's
** header, the value RavenDB echoes back after a successful put): checking
** the text once and picking out two or three fields costs a fraction of
** building Lua tables for all of it.
*/

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "lua.h"
#include "lauxlib.h"

#include "compat.h"
#include "jsonpick.h"
#include "units.h"

#define MAX_DEPTH 1000          /* lua-cjson's decode_max_depth */

static const char *skip_ws (const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static int is_digit (char c) { return c >= '0' && c <= '9'; }

static int is_hex (char c) {
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* the string starting at p (a quote); past its closing quote, NULL when malformed */
static const char *skip_string (const char *p, const char *end) {
    for (p++; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') return p + 1;
        if (c < 0x20) return NULL;
        if (c == '\\') {
            if (++p >= end) return NULL;
            if (*p == 'u') {
                if (end - p < 5 || !is_hex(p[1]) || !is_hex(p[2]) || !is_hex(p[3]) ||
                    !is_hex(p[4]))
                    return NULL;
                p += 4;
            } else if (strchr("\"\\/bfnrt", *p) == NULL || *p == '\0') {
                return NULL;
            }
        }
    }
    return NULL;
}

/* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static const char *skip_number (const char *p, const char *end) {
    if (p < end && *p == '-') p++;
    if (p >= end || !is_digit(*p)) return NULL;
    if (*p == '0') p++;
    else while (p < end && is_digit(*p)) p++;
    if (p < end && *p == '.') {
        if (++p >= end || !is_digit(*p)) return NULL;
        while (p < end && is_digit(*p)) p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        if (++p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || !is_digit(*p)) return NULL;
        while (p < end && is_digit(*p)) p++;
    }
    return p;
}

static const char *skip_literal (const char *p, const char *end, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(end - p) < n || memcmp(p, word, n) != 0) return NULL;
    return p + n;
}

/* one value at p (after white space); past it, NULL when malformed */
static const char *skip_value (const char *p, const char *end, int depth) {
    p = skip_ws(p, end);
    if (p >= end) return NULL;
    switch (*p) {
        case '"': return skip_string(p, end);
        case 't': return skip_literal(p, end, "true");
        case 'f': return skip_literal(p, end, "false");
        case 'n': return skip_literal(p, end, "null");
        case '{': case '[': {
            char close = *p == '{' ? '}' : ']';
            if (depth >= MAX_DEPTH) return NULL;
            p = skip_ws(p + 1, end);
            if (p < end && *p == close) return p + 1;
            while (1) {
                if (close == '}') {
                    if (p >= end || *p != '"' || (p = skip_string(p, end)) == NULL)
                        return NULL;
                    p = skip_ws(p, end);
                    if (p >= end || *p != ':') return NULL;
                    p++;
                }
                if ((p = skip_value(p, end, depth + 1)) == NULL) return NULL;
                p = skip_ws(p, end);
                if (p < end && *p == close) return p + 1;
                if (p >= end || *p != ',') return NULL;
                p = skip_ws(p + 1, end);
            }
        }
        default: return skip_number(p, end);
    }
}

int cx_json_valid (const char *s, size_t n) {
    const char *p = skip_value(s, s + n, 0);
    return p != NULL && skip_ws(p, s + n) == s + n ? 0 : -1;
}

/* member `name` (nlen bytes, compared with the names as written: a name
** spelled with escapes never matches) of the object at p: the start of its
** value, the last one when repeated (as lua-cjson keeps the last); NULL when
** absent */
static const char *member (const char *p, const char *end, const char *name, size_t nlen) {
    const char *found = NULL;
    p = skip_ws(p, end);
    if (p >= end || *p != '{') return NULL;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') return NULL;
    while (p < end && *p == '"') {
        const char *k = p + 1, *kend = skip_string(p, end);
        if (kend == NULL) return NULL;
        p = skip_ws(kend, end);
        if (p >= end || *p != ':') return NULL;
        p = skip_ws(p + 1, end);
        if ((size_t)(kend - 1 - k) == nlen && memcmp(k, name, nlen) == 0) found = p;
        if ((p = skip_value(p, end, 1)) == NULL) return NULL;
        p = skip_ws(p, end);
        if (p >= end || *p != ',') break;
        p = skip_ws(p + 1, end);
    }
    return found;
}

/* element `i` (from 0) of the array at p: the start of its value, or NULL */
static const char *element (const char *p, const char *end, long i) {
    p = skip_ws(p, end);
    if (p >= end || *p != '[') return NULL;
    p = skip_ws(p + 1, end);
    if (p < end && *p == ']') return NULL;
    for (; i > 0; i--) {
        if ((p = skip_value(p, end, 1)) == NULL) return NULL;
        p = skip_ws(p, end);
        if (p >= end || *p != ',') return NULL;
        p = skip_ws(p + 1, end);
    }
    return p;
}

int cx_json_path (const char *s, size_t n, const char *path, const char **v,
                  const char **vend) {
    const char *p = s, *end = s + n;
    while (p != NULL) {
        size_t len = strcspn(path, ".");
        if (len > 0 && is_digit(path[0]))
            p = element(p, end, strtol(path, NULL, 10));
        else
            p = member(p, end, path, len);
        if (path[len] == '\0') break;
        path += len + 1;
    }
    if (p == NULL || (*vend = skip_value(p, end, 0)) == NULL) return -1;
    *v = skip_ws(p, end);
    return 0;
}

/*
** {======================================================
** The Lua face
** =======================================================
*/

/* the 4 hex digits at p (valid: checked by skip_string) */
static unsigned long hex4 (const char *p) {
    unsigned long v = 0;
    int i;
    for (i = 0; i < 4; i++) {
        char c = p[i];
        v = v * 16 + (unsigned long)(is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return v;
}

static void add_utf8 (luaL_Buffer *b, unsigned long c) {
    if (c < 0x80) {
        luaL_addchar(b, (char)c);
    } else if (c < 0x800) {
        luaL_addchar(b, (char)(0xC0 | (c >> 6)));
        luaL_addchar(b, (char)(0x80 | (c & 0x3F)));
    } else if (c < 0x10000) {
        luaL_addchar(b, (char)(0xE0 | (c >> 12)));
        luaL_addchar(b, (char)(0x80 | ((c >> 6) & 0x3F)));
        luaL_addchar(b, (char)(0x80 | (c & 0x3F)));
    } else {
        luaL_addchar(b, (char)(0xF0 | (c >> 18)));
        luaL_addchar(b, (char)(0x80 | ((c >> 12) & 0x3F)));
        luaL_addchar(b, (char)(0x80 | ((c >> 6) & 0x3F)));
        luaL_addchar(b, (char)(0x80 | (c & 0x3F)));
    }
}

/* pushes the (valid) JSON string [p, end) without its quotes, unescaped */
static void push_string (lua_State *L, const char *p, const char *end) {
    luaL_Buffer b;
    p++;
    end--;
    if (memchr(p, '\\', (size_t)(end - p)) == NULL) {
        lua_pushlstring(L, p, (size_t)(end - p));
        return;
    }
    luaL_buffinit(L, &b);
    while (p < end) {
        if (*p != '\\') { luaL_addchar(&b, *p++); continue; }
        p++;
        switch (*p++) {
            case 'b': luaL_addchar(&b, '\b'); break;
            case 'f': luaL_addchar(&b, '\f'); break;
            case 'n': luaL_addchar(&b, '\n'); break;
            case 'r': luaL_addchar(&b, '\r'); break;
            case 't': luaL_addchar(&b, '\t'); break;
            case 'u': {
                unsigned long c = hex4(p);
                p += 4;
                /* a surrogate pair is one code point; a lone half stays as it is */
                if (c >= 0xD800 && c < 0xDC00 && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
                    unsigned long lo = hex4(p + 2);
                    if (lo >= 0xDC00 && lo < 0xE000) {
                        c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00);
                        p += 6;
                    }
                }
                add_utf8(&b, c);
                break;
            }
            default: luaL_addchar(&b, p[-1]); break;      /* " \ / */
        }
    }
    luaL_pushresult(&b);
}

/* pushes the (valid) JSON number [p, end): an integer when it is one that fits */
static void push_number (lua_State *L, const char *p, const char *end) {
    char buf[64];
    size_t n = (size_t)(end - p);
    if (n >= sizeof buf) {      /* no integer is this long: a float, through Lua */
        lua_pushlstring(L, p, n);
        lua_pushnumber(L, lua_tonumber(L, -1));
        lua_remove(L, -2);
        return;
    }
    memcpy(buf, p, n);
    buf[n] = '\0';
    if (strpbrk(buf, ".eE") == NULL) {
        long long i;
        errno = 0;
        i = strtoll(buf, NULL, 10);
        if (errno == 0) {
            lua_pushinteger(L, (lua_Integer)i);
            return;
        }
    }
    lua_pushnumber(L, (lua_Number)strtod(buf, NULL));
}

/* core.json_fields and core.json_texts: `raw`, every value as its JSON text */
static int fields (lua_State *L, int raw) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    int i, top = lua_gettop(L);
    for (i = 2; i <= top; i++) luaL_checkstring(L, i);
    if (cx_json_valid(s, n) != 0) {
        lua_pushboolean(L, 0);
        lua_pushliteral(L, "not valid JSON");
        return 2;
    }
    luaL_checkstack(L, top, "too many paths");
    lua_pushboolean(L, 1);
    for (i = 2; i <= top; i++) {
        const char *v, *vend;
        if (cx_json_path(s, n, lua_tostring(L, i), &v, &vend) != 0) {
            lua_pushnil(L);
            continue;
        }
        if (raw) {
            lua_pushlstring(L, v, (size_t)(vend - v));
            continue;
        }
        switch (*v) {
            case '"': push_string(L, v, vend); break;
            case 't': lua_pushboolean(L, 1); break;
            case 'f': lua_pushboolean(L, 0); break;
            case 'n': lua_pushnil(L); break;
            case '{': case '[': lua_pushlstring(L, v, (size_t)(vend - v)); break;
            default: push_number(L, v, vend); break;
        }
    }
    return top;
}

/*
** core.json_fields(text, path...) -> true, value... | false, why
** Checks that `text` is valid JSON, then gives the value at each path (as in
** cx_json_path): a string (unescaped), a number (an integer when integral and
** in range), a boolean, nil for null or absent, and an object or array as its
** JSON text.
*/
static int core_json_fields (lua_State *L) {
    return fields(L, 0);
}

/*
** core.json_texts(text, path...) -> true, text... | false, why
** The same, giving every value found as its JSON text (to decode when it is
** needed), nil when absent.
*/
static int core_json_texts (lua_State *L) {
    return fields(L, 1);
}

static const luaL_Reg json_functions[] = {
    {"json_fields", core_json_fields},
    {"json_texts", core_json_texts},
    {NULL, NULL}
};

int jsonpick_open (lua_State *L) {
    luaL_setfuncs(L, json_functions, 0);
    return 0;
}

/* }====================================================== */
