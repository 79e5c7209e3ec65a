/*
** util.c: the core's leaf helpers (util.h): the error contract, clocks,
** dates, base64, random ids, class registration. No other unit is used here.
*/

#define _GNU_SOURCE     /* timegm */

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/random.h>

#include "lua.h"
#include "lauxlib.h"

#include "compat.h"
#include "util.h"

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

double cx_mono_time (void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
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
** Reads the ISO 8601 date-time s[0..len) into *t (epoch seconds): 0, or -1
** when it is not one. Takes what C#, Node and Python clients write: any
** number of fractional digits, then "Z", "+HH:MM"/"-HH:MM", or nothing (read
** as UTC: lease expiries are written from UTC clocks).
*/
int cx_parse_time (const char *s, size_t len, double *t) {
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
    *t = (double)timegm(&tm) - offset + frac;
    return 0;
bad:
    return -1;
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

/* the value of base64 digit `c` (standard alphabet), or -1 */
int cx_b64_value (int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
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

void cx_newclass (lua_State *L, const char *name, const luaL_Reg *meta,
                  const luaL_Reg *methods) {
    luaL_newmetatable(L, name);
    luaL_setfuncs(L, meta, 0);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}
