/*
** renew.c: auto-renewal of a lock in plain Lua. One thread per renewed lock
** re-writes the lease every `interval` seconds over its own connection (an
** SQLite handle or a libcurl handle) and never touches a Lua state: Lua reads
** what the thread publishes (current index, lease end, loss) through
** renewer:state(), under a mutex.
**
** The protocol stays in Lua: a backend hands over a *plan*, the request to
** repeat as templates (the value, the URL, the body) with slots where the
** new expiry dates, the held index, a per-renewal id and a lease go, and the
** reply fields that say whether the swap happened and its new index.
** Inside nginx none of this is used: renewal there is an ngx.timer.
**
** A renewal whose outcome is unknown is sent again unchanged (same dates,
** same id: RavenDB recognizes its raft-request-id) and, where the plan names
** the current value in a failed reply (etcd), a value equal to the one sent
** is our own earlier write: the renewal succeeded.
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
#include "jsonpath.h"

#define RENEWER_MT  "cmpxchg.Renewer"

enum { PLAN_EMBEDDED, PLAN_HTTP };

/* a template part: a literal, or a slot filled at each renewal */
enum { PART_TEXT, PART_DATE, PART_INDEX, PART_ID, PART_LEASE, PART_VALUE };

typedef struct Part {
    int kind;
    char *text;                 /* PART_TEXT */
    size_t len;
    double offset;              /* PART_DATE: date = now + ttl + offset */
} Part;

typedef struct Template { Part *parts; int n; } Template;

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
    Template value;             /* the value written (the lease) */
    char *path, *ns, *key, *sync;
    int busy_ms;
    Template url, body;         /* url: after a base; body: the value when empty */
    char **bases;               /* the nodes, tried in turn after an error */
    int nbases, base;
    int value_base64;
    char *method, *success_field, *index_field, *current_value_field, *current_index_field;
    char *lease_path;           /* a lease granted before each attempt (etcd) */
    long lease_ttl;
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

/* the integer at `path` (a JSON number or a string holding one); 0 when none */
static long long json_int (const Buf *reply, const char *path) {
    const char *v, *vend;
    if (cx_json_path(reply->data, reply->len, path, &v, &vend) != 0) return 0;
    return strtoll(*v == '"' ? v + 1 : v, NULL, 10);
}

/* }====================================================== */

/*
** {======================================================
** One renewal: 1 swapped (*index updated), 0 taken over, -1 error (err)
** =======================================================
*/

/* what one renewal writes, kept for its retries */
typedef struct Attempt {
    double mono, wall;          /* read before the first request */
    char id[37];                /* a random id: RavenDB's raft-request-id, etcd's write id */
    char lease[20];
    long long index;
    Buf value, encoded;         /* the value, and as the body carries it */
} Attempt;

static int add_b64 (Buf *b, const Buf *src) {
    size_t i;
    for (i = 0; i < src->len; i += 3) {
        char quad[4];
        cx_b64_quad((const unsigned char *)src->data + i, src->len - i < 3 ? src->len - i : 3,
                    quad);
        if (buf_add(b, quad, 4) != 0) return -1;
    }
    return buf_add(b, "", 0);
}

/* fills a template into `out` (emptied first) */
static int fill (const Renewer *r, const Template *t, const Attempt *a, Buf *out) {
    int i;
    out->len = 0;
    for (i = 0; i < t->n; i++) {
        const Part *p = &t->parts[i];
        char text[40];
        const char *add = text;
        size_t len;
        switch (p->kind) {
            case PART_TEXT: add = p->text; len = p->len; break;
            case PART_DATE: cx_format_time(a->wall + r->ttl + p->offset, text);
                            len = strlen(text); break;
            case PART_INDEX: len = (size_t)snprintf(text, sizeof text, "%lld", a->index); break;
            case PART_ID: add = a->id; len = strlen(a->id); break;
            case PART_LEASE: add = a->lease; len = strlen(a->lease); break;
            default: add = a->encoded.data; len = a->encoded.len; break;
        }
        if (buf_add(out, add ? add : "", add ? len : 0) != 0) return -1;
    }
    return buf_add(out, "", 0);
}

/* starts a renewal: its times, id and value; -1 when out of memory or random bytes */
static int prepare (const Renewer *r, Attempt *a, long long index, char *err, size_t errlen) {
    a->mono = mono_now();
    a->wall = cx_wall_time();
    a->index = index;
    a->lease[0] = '\0';
    if (cx_uuid(a->id) != 0) {
        snprintf(err, errlen, "cannot read random bytes");
        return -1;
    }
    if (fill(r, &r->value, a, &a->value) != 0) goto nomem;
    a->encoded.len = 0;
    if (r->value_base64 ? add_b64(&a->encoded, &a->value)
                        : buf_add(&a->encoded, a->value.data, a->value.len)) goto nomem;
    return 0;
nomem:
    snprintf(err, errlen, "not enough memory");
    return -1;
}

/* one request; the HTTP status, or 0 with err set when none came */
static long request (Renewer *r, CURL *curl, const Buf *url, const Buf *body, Buf *reply,
                     char *err, size_t errlen) {
    long status = 0;
    CURLcode rc;
    reply->len = 0;
    curl_easy_setopt(curl, CURLOPT_URL, url->data);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)body->len);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body->data);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, (void *)reply);
    rc = curl_easy_perform(curl);
    if (rc != CURLE_OK) {
        snprintf(err, errlen, "%s: %s", r->bases[r->base], curl_easy_strerror(rc));
        return 0;
    }
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    if (status != 200) {
        const char *v, *vend;
        if (reply->data && cx_json_path(reply->data, reply->len, "message", &v, &vend) == 0)
            snprintf(err, errlen, "%s: HTTP %ld: %.*s", r->bases[r->base], status,
                     (int)(vend - v > 200 ? 200 : vend - v), v);
        else
            snprintf(err, errlen, "%s: HTTP %ld", r->bases[r->base], status);
    }
    return status;
}

/*
** A lease for this attempt (etcd): our own random ID, so that a grant whose
** reply was lost and is sent again finds the lease there and knows it exists.
*/
static int grant_lease (Renewer *r, CURL *curl, Attempt *a, Buf *url, Buf *body, Buf *reply,
                        char *err, size_t errlen) {
    char id[37];
    int i;
    long status;
    if (cx_uuid(id) != 0) {
        snprintf(err, errlen, "cannot read random bytes");
        return -1;
    }
    a->lease[0] = '1';                  /* 18 digits: below 2^63, never 0 */
    for (i = 1; i < 18; i++) a->lease[i] = (char)('0' + (id[i + 1] % 10));
    a->lease[18] = '\0';
    url->len = 0;
    body->len = 0;
    if (buf_add(url, r->bases[r->base], strlen(r->bases[r->base])) != 0 ||
        buf_add(url, r->lease_path, strlen(r->lease_path)) != 0) return -1;
    {
        char text[80];
        int n = snprintf(text, sizeof text, "{\"ID\":\"%s\",\"TTL\":\"%ld\"}", a->lease,
                         r->lease_ttl);
        if (buf_add(body, text, (size_t)n) != 0) return -1;
    }
    status = request(r, curl, url, body, reply, err, errlen);
    if (status == 200 || (reply->data && strstr(reply->data, "lease already exists")))
        return 0;
    return -1;
}

static int renew_http (Renewer *r, CURL *curl, Attempt *a, long long *index, char *err,
                       size_t errlen) {
    Buf url = { NULL, 0, 0 }, body = { NULL, 0, 0 }, reply = { NULL, 0, 0 };
    const char *v, *vend;
    int outcome = -1;
    if (r->lease_path && grant_lease(r, curl, a, &url, &body, &reply, err, errlen) != 0)
        goto done;
    url.len = 0;
    if (buf_add(&url, r->bases[r->base], strlen(r->bases[r->base])) != 0) goto nomem;
    {
        Buf tail = { NULL, 0, 0 };
        int bad = fill(r, &r->url, a, &tail) != 0 || buf_add(&url, tail.data, tail.len) != 0;
        free(tail.data);
        if (bad) goto nomem;
    }
    if (r->body.n > 0 ? fill(r, &r->body, a, &body) != 0
                      : (body.len = 0, buf_add(&body, a->encoded.data, a->encoded.len) != 0))
        goto nomem;
    if (request(r, curl, &url, &body, &reply, err, errlen) != 200) goto done;
    if (cx_json_path(reply.data, reply.len, r->success_field, &v, &vend) != 0) {
        if (!r->current_value_field) {  /* RavenDB always says; etcd leaves out false */
            snprintf(err, errlen, "a reply without %s", r->success_field);
            goto done;
        }
        v = "false"; vend = v + 5;
    }
    if (vend - v == 4 && memcmp(v, "true", 4) == 0) {
        long long n = json_int(&reply, r->index_field);
        if (n > 0) { *index = n; outcome = 1; }
        else snprintf(err, errlen, "a reply with a strange %s", r->index_field);
    }
    else if (vend - v != 5 || memcmp(v, "false", 5) != 0)
        snprintf(err, errlen, "a reply with a strange %s", r->success_field);
    else if (r->current_value_field &&
             cx_json_path(reply.data, reply.len, r->current_value_field, &v, &vend) == 0 &&
             (size_t)(vend - v) == a->encoded.len + 2 &&
             memcmp(v + 1, a->encoded.data, a->encoded.len) == 0) {
        /* our own write, applied by an attempt whose reply was lost */
        long long n = json_int(&reply, r->current_index_field);
        if (n > 0) { *index = n; outcome = 1; }
        else snprintf(err, errlen, "a reply with a strange %s", r->current_index_field);
    }
    else outcome = 0;
    goto done;
nomem:
    snprintf(err, errlen, "not enough memory");
done:
    if (outcome < 0 && r->nbases > 1) r->base = (r->base + 1) % r->nbases;
    free(url.data);
    free(body.data);
    free(reply.data);
    return outcome;
}

static CURL *connect_http (const Renewer *r) {
    CURL *curl = curl_easy_init();
    if (curl == NULL) return NULL;
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
    return curl;
}

static void *renew_main (void *arg) {
    Renewer *r = (Renewer *)arg;
    Embedded *db = NULL;
    CURL *curl = NULL;
    Attempt a;
    int pending = 0;            /* a renewal under way (its retries reuse a) */
    char err[400] = "";
    double next = mono_now() + r->interval;
    memset(&a, 0, sizeof a);
    if (r->kind == PLAN_EMBEDDED)
        db = cx_embedded_connect(r->path, r->ns, r->busy_ms, r->sync, err, sizeof err);
    else if ((curl = connect_http(r)) == NULL)
        snprintf(err, sizeof err, "curl_easy_init failed");
    while (db != NULL || curl != NULL) {
        struct timespec until;
        long long index, result = 0;
        double valid;
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

        if (!pending && prepare(r, &a, index, err, sizeof err) != 0) outcome = -1;
        else if (pending = 1, db != NULL)
            outcome = cx_embedded_swap(db, r->key, strlen(r->key), a.value.data, a.value.len,
                                       index, a.wall + r->ttl + r->expires_offset, &result,
                                       err, sizeof err);
        else {
            /* a request may not outlast the lease: one that hangs (on a member
            ** whose leader just died, say) is cut while there is time to try
            ** another node */
            double left = valid - mono_now() - 0.25;
            curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS,
                             (long)(1000 * fmax(0.2, fmin(r->timeout, left / 2))));
            outcome = renew_http(r, curl, &a, &result, err, sizeof err);
        }
        pthread_mutex_lock(&r->mu);
        if (outcome == 1) {
            r->index = result;
            r->valid_mono = a.mono + r->ttl - r->skew;
            r->renewals++;
            pending = 0;
            next = a.mono + r->interval;
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
    free(a.value.data);
    free(a.encoded.data);
    return NULL;
}

/* }====================================================== */

/*
** {======================================================
** The Lua face
** =======================================================
*/

static void template_free (Template *t) {
    int i;
    for (i = 0; i < t->n; i++) free(t->parts[i].text);
    free(t->parts);
}

static void renewer_free (Renewer *r) {
    int i;
    template_free(&r->value);
    template_free(&r->url);
    template_free(&r->body);
    for (i = 0; i < r->nbases; i++) free(r->bases[i]);
    free(r->bases);
    free(r->path); free(r->ns); free(r->key); free(r->sync);
    free(r->method); free(r->success_field); free(r->index_field);
    free(r->current_value_field); free(r->current_index_field); free(r->lease_path);
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

static char *copy_string (lua_State *L, int idx, size_t *len) {
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    char *d = (char *)malloc(n + 1);
    if (d == NULL) luaL_error(L, "not enough memory");
    memcpy(d, s, n + 1);
    if (len) *len = n;
    return d;
}

static char *plan_string (lua_State *L, const char *name, int required) {
    char *d;
    lua_getfield(L, 1, name);
    if (lua_isnil(L, -1) && !required) { lua_pop(L, 1); return NULL; }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "renewal plan: '%s' must be a string", name);
    d = copy_string(L, -1, NULL);
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
** Reads template `name` of the plan: an array of strings (literals), numbers
** (date slots: now + ttl + the number) and {slot = "index"|"id"|"lease"|"value"}.
*/
static void plan_template (lua_State *L, const char *name, Template *t, int required) {
    static const char *const slots[] = { "index", "id", "lease", "value", NULL };
    int i, n;
    lua_getfield(L, 1, name);
    if (lua_isnil(L, -1) && !required) { lua_pop(L, 1); return; }
    if (!lua_istable(L, -1)) luaL_error(L, "renewal plan: '%s' must be a table", name);
    n = (int)lua_rawlen(L, -1);
    t->parts = (Part *)calloc((size_t)(n > 0 ? n : 1), sizeof(Part));
    if (t->parts == NULL) luaL_error(L, "not enough memory");
    for (i = 1; i <= n; i++) {
        Part *p = &t->parts[i - 1];
        lua_rawgeti(L, -1, i);
        t->n = i;
        if (lua_type(L, -1) == LUA_TNUMBER) {
            p->kind = PART_DATE;
            p->offset = (double)lua_tonumber(L, -1);
        }
        else if (lua_type(L, -1) == LUA_TSTRING) {
            p->kind = PART_TEXT;
            p->text = copy_string(L, -1, &p->len);
        }
        else if (lua_istable(L, -1)) {
            int k;
            lua_getfield(L, -1, "slot");
            k = luaL_checkoption(L, -1, NULL, slots);
            p->kind = PART_INDEX + k;
            lua_pop(L, 1);
        }
        else luaL_error(L, "renewal plan: a strange part in '%s'", name);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void plan_http (lua_State *L, Renewer *r) {
    int i, n;
    plan_template(L, "url", &r->url, 1);
    plan_template(L, "body", &r->body, 0);
    r->method = plan_string(L, "method", 1);
    r->success_field = plan_string(L, "success_field", 1);
    r->index_field = plan_string(L, "index_field", 1);
    r->current_value_field = plan_string(L, "current_value_field", 0);
    r->current_index_field = plan_string(L, "current_index_field", r->current_value_field != NULL);
    r->lease_path = plan_string(L, "lease_path", 0);
    /* the lease outlives the expiry the value carries: ttl + lease_grace */
    r->lease_ttl = (long)ceil(r->ttl + plan_number(L, "lease_grace", 0));
    r->ca = plan_string(L, "ca", 0);
    r->cert = plan_string(L, "cert", 0);
    r->keyfile = plan_string(L, "key_file", 0);
    lua_getfield(L, 1, "verify");
    r->verify = lua_isnil(L, -1) || lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, 1, "value_base64");
    r->value_base64 = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, 1, "bases");
    luaL_checktype(L, -1, LUA_TTABLE);
    n = (int)lua_rawlen(L, -1);
    luaL_argcheck(L, n > 0, 1, "renewal plan: no bases");
    r->bases = (char **)calloc((size_t)(n > 0 ? n : 1), sizeof(char *));
    if (r->bases == NULL) luaL_error(L, "not enough memory");
    for (i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        luaL_checktype(L, -1, LUA_TSTRING);
        r->bases[i - 1] = copy_string(L, -1, NULL);
        r->nbases = i;
        lua_pop(L, 1);
    }
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
            if (more == NULL) luaL_error(L, "not enough memory");
            r->headers = more;
        }
    }
    lua_pop(L, 1);
    cx_http_global_init();
}

/*
** core.renewer_start(plan) -> Renewer. plan: kind ("embedded"|"http"),
** index, ttl, clock_skew, interval, valid_mono, value (a template);
** embedded: path, namespace, key, busy_ms, sync, expires_offset; http:
** bases (URLs tried in turn), url and body (templates; the body is the
** value when left out), value_base64, method, headers, timeout, ca, cert,
** key_file, verify, success_field, index_field (dotted JSON paths of the
** reply), current_value_field and current_index_field (a failed reply's
** current value and index), lease_path and lease_grace.
*/
static int renewer_start (lua_State *L) {
    Renewer **rp, *r;
    pthread_condattr_t ca;
    const char *kind;
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
    plan_template(L, "value", &r->value, 1);
    if (r->kind == PLAN_EMBEDDED) {
        r->path = plan_string(L, "path", 1);
        r->ns = plan_string(L, "namespace", 1);
        r->key = plan_string(L, "key", 1);
        r->sync = plan_string(L, "sync", 1);
        r->busy_ms = (int)plan_number(L, "busy_ms", 5000);
    }
    else plan_http(L, r);
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
