/*
** cmpxchg_core.c: luaopen_cmpxchg_core. The mechanism the Lua layer cannot
** have portably: clocks, sleeping, random ids, C#-compatible UTC dates, key
** folding, process identity, the embedded SQLite store and the libcurl
** transport.
*/

#define _GNU_SOURCE     /* timegm */

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "lua.h"
#include "lauxlib.h"

#include "compat.h"
#include "jsonpath.h"
#include "keycase.h"
#include "cmpxchg_core.h"

int cx_push_error (lua_State *L, const char *code, const char *fmt, ...) {
    va_list ap;
    lua_pushnil(L);
    lua_pushfstring(L, "%s: ", code);
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_concat(L, 2);
    lua_pushstring(L, code);
    return 3;
}

double cx_wall_time (void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
** core.monotime() -> seconds from an arbitrary start that never jumps; lease
** lengths are measured with it so a wall-clock step cannot stretch a lease.
*/
static int core_monotime (lua_State *L) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
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

static int fill_random (unsigned char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(buf + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        got += (size_t)r;
    }
    return 0;
}

/*
** Random bytes are read from the kernel RANDOM_POOL bytes at a time and
** handed out 16 at a time: one getrandom(2) per 32 UUIDs (every write
** carries one) instead of one per UUID. The pool lives in its own page
** marked MADV_WIPEONFORK, so a forked child (an nginx worker, a user's
** fork) finds it zeroed: empty and unlocked (a zeroed mutex is an unlocked
** one on Linux), and never hands out its parent's bytes. Where the kernel
** has no MADV_WIPEONFORK, every UUID reads the kernel.
*/
#define RANDOM_POOL 512

typedef struct RandomPool {
    pthread_mutex_t lock;       /* renewal threads take UUIDs too */
    size_t used;                /* bytes handed out; 0 after a fork: refill */
    int filled;
    unsigned char bytes[RANDOM_POOL];
} RandomPool;

/* NULL: no pool, read the kernel each time; else one page for the life of
** the process (a few KB, never unmapped: a renewal thread may be using it) */
static RandomPool *random_pool;
static pthread_once_t random_pool_once = PTHREAD_ONCE_INIT;

static void random_pool_init (void) {
    long page = sysconf(_SC_PAGESIZE);
    size_t size = page > 0 && (size_t)page >= sizeof(RandomPool) ? (size_t)page : 4096;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return;
    if (madvise(p, size, MADV_WIPEONFORK) != 0) {
        munmap(p, size);
        return;
    }
    random_pool = (RandomPool *)p;      /* zeroed: empty, and its lock unlocked */
}

/* 16 random bytes into `out`: 0, or -1 when the kernel gives none */
static int random16 (unsigned char out[16]) {
    RandomPool *pool;
    int rc = 0;
    pthread_once(&random_pool_once, random_pool_init);
    pool = random_pool;
    if (pool == NULL) return fill_random(out, 16);
    pthread_mutex_lock(&pool->lock);
    if (!pool->filled || pool->used + 16 > RANDOM_POOL) {
        rc = fill_random(pool->bytes, RANDOM_POOL);
        pool->filled = rc == 0;
        pool->used = 0;
    }
    if (rc == 0) {
        memcpy(out, pool->bytes + pool->used, 16);
        memset(pool->bytes + pool->used, 0, 16);        /* handed out once */
        pool->used += 16;
    }
    pthread_mutex_unlock(&pool->lock);
    return rc;
}

int cx_uuid (char out[37]) {
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    int i, j = 0;
    if (random16(b) != 0)
        return -1;
    b[6] = (unsigned char)((b[6] & 0x0F) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);
    for (i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[j++] = '-';
        out[j++] = hex[b[i] >> 4];
        out[j++] = hex[b[i] & 15];
    }
    out[j] = '\0';
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

/*
** core.format_time(epoch) -> "2024-01-02T03:04:05.1234567Z": what C# writes for
** a DateTime.UtcNow value (7 fractional digits and Z), so C# readers compare
** our lease expiries exactly as they compare their own.
*/
void cx_format_time (double t, char out[40]) {
    double whole = floor(t);
    int ticks = (int)lround((t - whole) * 1e7);
    time_t secs;
    struct tm tm;
    if (ticks >= 10000000) { whole += 1; ticks -= 10000000; }
    if (ticks < 0) ticks = 0;
    secs = (time_t)whole;
    memset(&tm, 0, sizeof tm);
    gmtime_r(&secs, &tm);
    snprintf(out, 40, "%04d-%02d-%02dT%02d:%02d:%02d.%07dZ",
             (tm.tm_year + 1900) % 10000, (tm.tm_mon + 1) % 100, tm.tm_mday % 100,
             tm.tm_hour % 100, tm.tm_min % 100, tm.tm_sec % 100, ticks % 10000000);
}

static int core_format_time (lua_State *L) {
    lua_Number t = luaL_checknumber(L, 1);
    char buf[40];
    luaL_argcheck(L, t >= 0 && t < 253402300800.0, 1, "time out of range");
    cx_format_time((double)t, buf);
    lua_pushstring(L, buf);
    return 1;
}

static int read_digits (const char **p, int n) {
    int v = 0, i;
    for (i = 0; i < n; i++) {
        if (**p < '0' || **p > '9') return -1;
        v = v * 10 + (**p - '0');
        (*p)++;
    }
    return v;
}

/*
** core.parse_time(s) -> epoch seconds, or nil when `s` is not an ISO 8601
** date-time. Takes what C#, Node and Python clients write: any number of
** fractional digits, then "Z", "+HH:MM"/"-HH:MM", or nothing (read as UTC:
** lease expiries are written from UTC clocks).
*/
static int core_parse_time (lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    const char *p = s, *end = s + len;
    struct tm tm;
    double frac = 0, scale = 0.1;
    int offset = 0;
    memset(&tm, 0, sizeof tm);
    if (len < 19) goto bad;
    tm.tm_year = read_digits(&p, 4) - 1900; if (*p++ != '-') goto bad;
    tm.tm_mon = read_digits(&p, 2) - 1;     if (*p++ != '-') goto bad;
    tm.tm_mday = read_digits(&p, 2);        if (*p != 'T' && *p != ' ') goto bad;
    p++;
    tm.tm_hour = read_digits(&p, 2);        if (*p++ != ':') goto bad;
    tm.tm_min = read_digits(&p, 2);         if (*p++ != ':') goto bad;
    tm.tm_sec = read_digits(&p, 2);
    if (tm.tm_year < -1899 || tm.tm_mon < 0 || tm.tm_mon > 11 || tm.tm_mday < 1 ||
        tm.tm_mday > 31 || tm.tm_hour < 0 || tm.tm_hour > 23 || tm.tm_min < 0 ||
        tm.tm_min > 59 || tm.tm_sec < 0 || tm.tm_sec > 60)
        goto bad;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9') goto bad;
        while (p < end && *p >= '0' && *p <= '9') {
            frac += (*p++ - '0') * scale;
            scale /= 10;
        }
    }
    if (p < end && (*p == 'Z' || *p == 'z'))
        p++;
    else if (p < end && (*p == '+' || *p == '-')) {
        int sign = *p++ == '-' ? -1 : 1, hh, mm;
        if (end - p < 5) goto bad;
        hh = read_digits(&p, 2);
        if (*p++ != ':') goto bad;
        mm = read_digits(&p, 2);
        if (hh < 0 || hh > 23 || mm < 0 || mm > 59) goto bad;
        offset = sign * (hh * 3600 + mm * 60);
    }
    if (p != end) goto bad;
    lua_pushnumber(L, (lua_Number)((double)timegm(&tm) - offset + frac));
    return 1;
bad:
    lua_pushnil(L);
    return 1;
}

/*
** core.fold_key(key) -> the key lower-cased as RavenDB compares it, or nil and
** a message when the key is longer than 512 bytes or not valid UTF-8.
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
** compare-exchange key, else why not: blank, longer than 512 bytes, not
** UTF-8, or in RavenDB's reserved "rvn-atomic/" space (compared folded).
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

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* base64 of 1 to 3 bytes into out[4], padded with '=' */
void cx_b64_quad (const unsigned char *s, size_t n, char out[4]) {
    unsigned long v = (unsigned long)s[0] << 16;
    if (n > 1) v |= (unsigned long)s[1] << 8;
    if (n > 2) v |= s[2];
    out[0] = b64_alphabet[(v >> 18) & 63];
    out[1] = b64_alphabet[(v >> 12) & 63];
    out[2] = n > 1 ? b64_alphabet[(v >> 6) & 63] : '=';
    out[3] = n > 2 ? b64_alphabet[v & 63] : '=';
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

static int b64_value (int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* core.b64decode(s) -> bytes, or nil when `s` is not padded standard base64 */
static int core_b64decode (lua_State *L) {
    size_t len, i;
    const char *s = luaL_checklstring(L, 1, &len);
    luaL_Buffer b;
    if (len % 4 != 0) { lua_pushnil(L); return 1; }
    luaL_buffinit(L, &b);
    for (i = 0; i < len; i += 4) {
        int a = b64_value(s[i]), c1 = b64_value(s[i + 1]);
        int pad2 = s[i + 2] == '=', pad3 = s[i + 3] == '=';
        int c2 = pad2 ? 0 : b64_value(s[i + 2]), c3 = pad3 ? 0 : b64_value(s[i + 3]);
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

/*
** core.mkdir_p(path) -> true | nil, message. Creates `path` and its missing
** parents with mode 0700 (only the default store location is created).
*/
static int core_mkdir_p (lua_State *L) {
    size_t len;
    const char *path = luaL_checklstring(L, 1, &len);
    char buf[4096];
    size_t i;
    struct stat st;
    luaL_argcheck(L, len > 0 && len < sizeof buf, 1, "path empty or too long");
    memcpy(buf, path, len + 1);
    for (i = 1; i <= len; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0700) != 0 && errno != EEXIST) {
                lua_pushnil(L);
                lua_pushfstring(L, "cannot create directory %s: %s", buf, strerror(errno));
                return 2;
            }
            buf[i] = c;
        }
    }
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
        lua_pushnil(L);
        lua_pushfstring(L, "%s is not a directory", path);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static const luaL_Reg core_functions[] = {
    {"monotime", core_monotime},
    {"time", core_time},
    {"sleep", core_sleep},
    {"uuid", core_uuid},
    {"format_time", core_format_time},
    {"parse_time", core_parse_time},
    {"fold_key", core_fold_key},
    {"key_problem", core_key_problem},
    {"url_escape", core_url_escape},
    {"json_fields", cx_json_fields},
    {"json_texts", cx_json_texts},
    {"pid", core_pid},
    {"hostname", core_hostname},
    {"mkdir_p", core_mkdir_p},
    {"b64encode", core_b64encode},
    {"b64decode", core_b64decode},
    {"embedded_open", cx_embedded_open},
    {"http_new", cx_http_new},
    {"renewer_start", cx_renewer_start},
    {NULL, NULL}
};

LUAMOD_API int luaopen_cmpxchg_core (lua_State *L) {
    cx_embedded_register(L);
    cx_http_register(L);
    cx_renewer_register(L);
    luaL_newlib(L, core_functions);
    lua_pushinteger(L, CX_MAX_KEY_BYTES);
    lua_setfield(L, -2, "MAX_KEY_BYTES");
    return 1;
}
