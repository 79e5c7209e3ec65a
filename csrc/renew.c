/*
** renew.c: auto-renewal of a lock in plain Lua. One thread per renewed lock
** re-writes the lease every `interval` seconds over its own connection (an
** SQLite handle or a libcurl handle) and never touches a Lua state: Lua reads
** what the thread publishes (current index, lease end, loss) through
** renewer:state(), under a mutex.
**
** The protocol stays in Lua: a backend hands over a *plan*, the request to
** repeat, with slots where the new expiry dates go (as C# writes them) and
** the reply fields that say whether the swap happened and its new index.
** Inside nginx none of this is used: renewal there is an ngx.timer.
*/

#define _GNU_SOURCE     /* timegm, pthread_condattr_setclock */

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "lua.h"
#include "lauxlib.h"

#include "compat.h"
#include "cmpxchg_core.h"
#include "embedded.h"

#define RENEWER_MT  "cmpxchg.Renewer"

enum { PLAN_EMBEDDED, PLAN_HTTP };

typedef struct Part {           /* a literal, or a date slot */
    char *text;
    size_t len;
    int is_date;
    double offset;              /* date = now + ttl + offset */
} Part;

typedef struct Buf { char *data; size_t len, cap; } Buf;

typedef struct Renewer {
    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* under mu */
    int stop, lost;
    long long index;
    double valid_mono;          /* lease end (minus skew) on the monotonic clock */
    long renewals;
    char reason[512];
    /* the plan: read-only once the thread runs */
    int kind;
    double ttl, skew, interval, expires_offset, timeout;
    Part *parts;
    int nparts;
    char *path, *ns, *key, *sync;
    int busy_ms;
    char *method, *url_prefix, *url_suffix, *success_field, *index_field;
    int raft;
    struct curl_slist *headers;
    char *ca, *cert, *keyfile;
    int verify;
} Renewer;

/*
** {======================================================
** Small helpers: clocks, buffers, dates, JSON fields
** =======================================================
*/

static double mono_now (void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int buf_add (Buf *b, const char *p, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 512;
        char *d;
        while (cap < b->len + n + 1) cap *= 2;
        d = (char *)realloc(b->data, cap);
        if (d == NULL) return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static size_t on_reply (char *p, size_t size, size_t n, void *ud) {
    return buf_add((Buf *)ud, p, size * n) == 0 ? size * n : 0;
}

static const char *skip_ws (const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* skips one JSON value; NULL when malformed */
static const char *skip_value (const char *p, const char *end) {
    int depth = 0;
    p = skip_ws(p, end);
    do {
        if (p >= end) return NULL;
        if (*p == '"') {
            for (p++; p < end && *p != '"'; p++)
                if (*p == '\\') p++;
            if (p >= end) return NULL;
            p++;
        }
        else if (*p == '{' || *p == '[') { depth++; p++; }
        else if (*p == '}' || *p == ']') { depth--; p++; }
        else if (depth > 0) p++;
        else {
            while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ') p++;
        }
    } while (depth > 0);
    return p;
}

/*
** Finds member `name` of the top-level object of `s`; sets [*v, *vend) to its
** value. Returns 0 when found. Nested members of the same name are skipped
** with their containing values.
*/
static int top_field (const char *s, size_t n, const char *name, const char **v,
                      const char **vend) {
    const char *p = skip_ws(s, s + n), *end = s + n;
    size_t nlen = strlen(name);
    if (p >= end || *p != '{') return -1;
    p++;
    while (1) {
        const char *k, *kend;
        p = skip_ws(p, end);
        if (p >= end || *p != '"') return -1;
        k = ++p;
        while (p < end && *p != '"') { if (*p == '\\') p++; p++; }
        if (p >= end) return -1;
        kend = p;
        p = skip_ws(p + 1, end);
        if (p >= end || *p != ':') return -1;
        p = skip_ws(p + 1, end);
        if ((size_t)(kend - k) == nlen && memcmp(k, name, nlen) == 0) {
            *v = p;
            *vend = skip_value(p, end);
            return *vend ? 0 : -1;
        }
        if ((p = skip_value(p, end)) == NULL) return -1;
        p = skip_ws(p, end);
        if (p < end && *p == ',') { p++; continue; }
        return -1;
    }
}

/* }====================================================== */

/*
** {======================================================
** One renewal: 1 swapped (*index updated), 0 taken over, -1 error (err)
** =======================================================
*/

static int build_body (Renewer *r, double wall, Buf *body) {
    int i;
    body->len = 0;
    for (i = 0; i < r->nparts; i++) {
        Part *p = &r->parts[i];
        if (p->is_date) {
            char date[40];
            cx_format_time(wall + r->ttl + p->offset, date);
            if (buf_add(body, date, strlen(date)) != 0) return -1;
        }
        else if (buf_add(body, p->text, p->len) != 0) return -1;
    }
    return buf_add(body, "", 0);
}

static int renew_http (Renewer *r, CURL *curl, long long *index, const char *raft,
                       const Buf *body, char *err, size_t errlen) {
    char url[4096];
    Buf reply = { NULL, 0, 0 };
    const char *v, *vend;
    long status = 0;
    CURLcode rc;
    int outcome = -1;
    snprintf(url, sizeof url, "%s%lld%s%s%s", r->url_prefix, *index, r->url_suffix,
             r->raft ? "&raft-request-id=" : "", r->raft ? raft : "");
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)body->len);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body->data);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, (void *)&reply);
    rc = curl_easy_perform(curl);
    if (rc != CURLE_OK)
        snprintf(err, errlen, "%s", curl_easy_strerror(rc));
    else if (curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status), status != 200)
        snprintf(err, errlen, "HTTP %ld", status);
    else if (reply.data == NULL || top_field(reply.data, reply.len, r->success_field, &v, &vend) != 0)
        snprintf(err, errlen, "a reply without %s", r->success_field);
    else if (vend - v == 5 && memcmp(v, "false", 5) == 0)
        outcome = 0;
    else if (vend - v != 4 || memcmp(v, "true", 4) != 0)
        snprintf(err, errlen, "a reply with a strange %s", r->success_field);
    else if (top_field(reply.data, reply.len, r->index_field, &v, &vend) != 0)
        snprintf(err, errlen, "a reply without %s", r->index_field);
    else {
        char *stop;
        long long n = strtoll(*v == '"' ? v + 1 : v, &stop, 10);
        if (n > 0) { *index = n; outcome = 1; }
        else snprintf(err, errlen, "a reply with a strange %s", r->index_field);
    }
    free(reply.data);
    return outcome;
}

static void *renew_main (void *arg) {
    Renewer *r = (Renewer *)arg;
    Embedded *db = NULL;
    CURL *curl = NULL;
    Buf body = { NULL, 0, 0 };
    char err[400] = "", raft[37] = "";
    double next = mono_now() + r->interval;
    if (r->kind == PLAN_EMBEDDED)
        db = cx_embedded_connect(r->path, r->ns, r->busy_ms, r->sync, err, sizeof err);
    else if ((curl = curl_easy_init()) != NULL) {
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, r->method);
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, r->headers);
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_reply);
        curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)(r->timeout * 1000));
        curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 2000L);
        curl_easy_setopt(curl, CURLOPT_ACCEPT_ENCODING, "");
        curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, r->verify ? 1L : 0L);
        curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, r->verify ? 2L : 0L);
        if (r->ca) curl_easy_setopt(curl, CURLOPT_CAINFO, r->ca);
        if (r->cert) curl_easy_setopt(curl, CURLOPT_SSLCERT, r->cert);
        if (r->keyfile) curl_easy_setopt(curl, CURLOPT_SSLKEY, r->keyfile);
    }
    else snprintf(err, sizeof err, "curl_easy_init failed");
    while (db != NULL || curl != NULL) {
        struct timespec until;
        long long index, result = 0;
        double mono, wall, valid;
        int outcome;
        pthread_mutex_lock(&r->mu);
        until.tv_sec = (time_t)next;
        until.tv_nsec = (long)((next - floor(next)) * 1e9);
        while (!r->stop && mono_now() < next)
            pthread_cond_timedwait(&r->cv, &r->mu, &until);
        if (r->stop) { pthread_mutex_unlock(&r->mu); break; }
        index = r->index;
        valid = r->valid_mono;
        pthread_mutex_unlock(&r->mu);

        mono = mono_now();
        wall = cx_wall_time();
        if (raft[0] == '\0' && cx_uuid(raft) != 0) {   /* one per renewal, kept on retries */
            snprintf(err, sizeof err, "cannot read random bytes");
            raft[0] = '\0';
        }
        if (build_body(r, wall, &body) != 0) {
            snprintf(err, sizeof err, "not enough memory");
            outcome = -1;
        }
        else if (db != NULL) {
            outcome = cx_embedded_swap(db, r->key, strlen(r->key), body.data, body.len, index,
                                       wall + r->ttl + r->expires_offset, &result, err,
                                       sizeof err);
        }
        else {
            result = index;
            outcome = renew_http(r, curl, &result, raft, &body, err, sizeof err);
        }
        pthread_mutex_lock(&r->mu);
        if (outcome == 1) {
            r->index = result;
            r->valid_mono = mono + r->ttl - r->skew;
            r->renewals++;
            raft[0] = '\0';
            next = mono + r->interval;
        }
        else if (outcome == 0) {
            r->lost = 1;
            snprintf(r->reason, sizeof r->reason, "lost: the lease was taken over");
        }
        else if (mono_now() + 0.5 >= valid) {   /* no time left to try again */
            r->lost = 1;
            snprintf(r->reason, sizeof r->reason, "lost: renewal failed: %s", err);
        }
        else next = mono_now() + fmin(0.5, r->interval / 4);
        outcome = r->lost;
        pthread_mutex_unlock(&r->mu);
        if (outcome) break;
    }
    if (db == NULL && curl == NULL) {       /* never connected */
        pthread_mutex_lock(&r->mu);
        r->lost = 1;
        snprintf(r->reason, sizeof r->reason, "lost: renewal cannot connect: %s", err);
        pthread_mutex_unlock(&r->mu);
    }
    cx_embedded_disconnect(db);
    if (curl) curl_easy_cleanup(curl);
    free(body.data);
    return NULL;
}

/* }====================================================== */

/*
** {======================================================
** The Lua face
** =======================================================
*/

static void renewer_free (Renewer *r) {
    int i;
    for (i = 0; i < r->nparts; i++) free(r->parts[i].text);
    free(r->parts);
    free(r->path); free(r->ns); free(r->key); free(r->sync);
    free(r->method); free(r->url_prefix); free(r->url_suffix);
    free(r->success_field); free(r->index_field);
    free(r->ca); free(r->cert); free(r->keyfile);
    curl_slist_free_all(r->headers);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

/* stops the thread and waits for it; the object stays readable */
static void renewer_join (Renewer *r) {
    if (!r->started) return;
    pthread_mutex_lock(&r->mu);
    r->stop = 1;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    r->started = 0;
}

static Renewer **check_renewer (lua_State *L) {
    return (Renewer **)luaL_checkudata(L, 1, RENEWER_MT);
}

static int renewer_gc (lua_State *L) {
    Renewer **rp = check_renewer(L);
    Renewer *r = *rp;
    if (r != NULL) {
        *rp = NULL;
        renewer_join(r);        /* no I/O here: the thread only stops */
        renewer_free(r);
    }
    return 0;
}

/* renewer:stop() -> index: stops renewing (idempotent); the last index */
static int renewer_stop (lua_State *L) {
    Renewer *r = *check_renewer(L);
    if (r == NULL) return luaL_error(L, "attempt to use a collected renewer");
    renewer_join(r);
    lua_pushinteger(L, (lua_Integer)r->index);
    return 1;
}

/* renewer:state() -> index, lease end (monotonic), lost, reason|nil, renewals */
static int renewer_state (lua_State *L) {
    Renewer *r = *check_renewer(L);
    if (r == NULL) return luaL_error(L, "attempt to use a collected renewer");
    pthread_mutex_lock(&r->mu);
    lua_pushinteger(L, (lua_Integer)r->index);
    lua_pushnumber(L, (lua_Number)r->valid_mono);
    lua_pushboolean(L, r->lost);
    if (r->lost) lua_pushstring(L, r->reason);
    else lua_pushnil(L);
    lua_pushinteger(L, (lua_Integer)r->renewals);
    pthread_mutex_unlock(&r->mu);
    return 5;
}

static char *plan_string (lua_State *L, const char *name, int required) {
    const char *s;
    size_t n;
    char *d;
    lua_getfield(L, 1, name);
    if (lua_isnil(L, -1) && !required) { lua_pop(L, 1); return NULL; }
    s = lua_tolstring(L, -1, &n);
    if (s == NULL) luaL_error(L, "renewal plan: '%s' must be a string", name);
    d = (char *)malloc(n + 1);
    if (d == NULL) luaL_error(L, "not enough memory");
    memcpy(d, s, n + 1);
    lua_pop(L, 1);
    return d;
}

static double plan_number (lua_State *L, const char *name, double def) {
    double v;
    lua_getfield(L, 1, name);
    v = lua_isnil(L, -1) ? def : (double)luaL_checknumber(L, -1);
    lua_pop(L, 1);
    return v;
}

/*
** core.renewer_start(plan) -> Renewer. plan: kind ("embedded"|"http"),
** index, ttl, clock_skew, interval, parts (strings and date offsets);
** embedded: path, namespace, key, busy_ms, sync, expires_offset; http:
** method, url_prefix, url_suffix, raft, headers, timeout, ca, cert, key_file,
** verify, success_field, index_field.
*/
static int renewer_start (lua_State *L) {
    Renewer **rp, *r;
    pthread_condattr_t ca;
    const char *kind;
    int i, n;
    luaL_checktype(L, 1, LUA_TTABLE);
    rp = (Renewer **)cx_newuserdata(L, sizeof(Renewer *));
    *rp = NULL;
    luaL_setmetatable(L, RENEWER_MT);
    r = (Renewer *)calloc(1, sizeof(Renewer));
    if (r == NULL) return luaL_error(L, "not enough memory");
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    *rp = r;                    /* from here on, __gc frees it whatever raises */
    lua_getfield(L, 1, "kind");
    kind = luaL_checkstring(L, -1);
    r->kind = strcmp(kind, "embedded") == 0 ? PLAN_EMBEDDED : PLAN_HTTP;
    lua_pop(L, 1);
    r->index = (long long)plan_number(L, "index", 0);
    r->ttl = plan_number(L, "ttl", 30);
    r->skew = plan_number(L, "clock_skew", 0);
    r->interval = plan_number(L, "interval", r->ttl / 3);
    r->expires_offset = plan_number(L, "expires_offset", 60);
    r->timeout = plan_number(L, "timeout", 5);
    r->valid_mono = plan_number(L, "valid_mono", mono_now() + r->ttl - r->skew);
    luaL_argcheck(L, r->ttl > 0 && r->interval > 0 && r->interval < r->ttl, 1,
                  "renewal plan: interval must be positive and shorter than ttl");
    lua_getfield(L, 1, "parts");
    luaL_checktype(L, -1, LUA_TTABLE);
    n = (int)lua_rawlen(L, -1);
    r->parts = (Part *)calloc((size_t)(n > 0 ? n : 1), sizeof(Part));
    if (r->parts == NULL) return luaL_error(L, "not enough memory");
    for (i = 1; i <= n; i++) {
        Part *p = &r->parts[i - 1];
        lua_rawgeti(L, -1, i);
        r->nparts = i;
        if (lua_type(L, -1) == LUA_TNUMBER) {
            p->is_date = 1;
            p->offset = (double)lua_tonumber(L, -1);
        }
        else {
            const char *s = luaL_checklstring(L, -1, &p->len);
            p->text = (char *)malloc(p->len + 1);
            if (p->text == NULL) return luaL_error(L, "not enough memory");
            memcpy(p->text, s, p->len + 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (r->kind == PLAN_EMBEDDED) {
        r->path = plan_string(L, "path", 1);
        r->ns = plan_string(L, "namespace", 1);
        r->key = plan_string(L, "key", 1);
        r->sync = plan_string(L, "sync", 1);
        r->busy_ms = (int)plan_number(L, "busy_ms", 5000);
    }
    else {
        r->method = plan_string(L, "method", 1);
        r->url_prefix = plan_string(L, "url_prefix", 1);
        r->url_suffix = plan_string(L, "url_suffix", 1);
        r->success_field = plan_string(L, "success_field", 1);
        r->index_field = plan_string(L, "index_field", 1);
        r->ca = plan_string(L, "ca", 0);
        r->cert = plan_string(L, "cert", 0);
        r->keyfile = plan_string(L, "key_file", 0);
        lua_getfield(L, 1, "verify");
        r->verify = lua_isnil(L, -1) || lua_toboolean(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, 1, "raft");
        r->raft = lua_toboolean(L, -1);
        lua_pop(L, 1);
        r->headers = curl_slist_append(NULL, "Expect:");
        lua_getfield(L, 1, "headers");
        if (lua_istable(L, -1)) {
            n = (int)lua_rawlen(L, -1);
            for (i = 1; i <= n; i++) {
                struct curl_slist *more;
                lua_rawgeti(L, -1, i);
                more = curl_slist_append(r->headers, luaL_checkstring(L, -1));
                lua_pop(L, 1);
                if (more == NULL) return luaL_error(L, "not enough memory");
                r->headers = more;
            }
        }
        lua_pop(L, 1);
        cx_http_global_init();
    }
    if (pthread_create(&r->thread, NULL, renew_main, r) != 0)
        return luaL_error(L, "cannot start the renewal thread: %s", strerror(errno));
    r->started = 1;
    return 1;
}

static const luaL_Reg renewer_methods[] = {
    {"state", renewer_state},
    {"stop", renewer_stop},
    {NULL, NULL}
};

static const luaL_Reg renewer_meta[] = {
    {"__gc", renewer_gc},
    {"__close", renewer_gc},
    {NULL, NULL}
};

int cx_renewer_start (lua_State *L) {
    return renewer_start(L);
}

void cx_renewer_register (lua_State *L) {
    luaL_newmetatable(L, RENEWER_MT);
    luaL_setfuncs(L, renewer_meta, 0);
    luaL_newlib(L, renewer_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

/* }====================================================== */
