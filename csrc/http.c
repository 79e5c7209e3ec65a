/*
** http.c: the libcurl engine behind lua/cmpxchg/transport/curl.lua. One
** Http object owns one CURL easy handle, so its connection is kept alive
** and reused across requests to one node.
**
** The transfer runs entirely in C: the write and header callbacks append to
** C buffers owned by the object and never call into Lua, so a Lua error can
** only happen after curl_easy_perform returned and every temporary (the
** header list) was freed. This is for plain Lua only: it blocks the calling
** thread, so inside nginx the cosocket transport is used instead.
*/

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "lua.h"
#include "lauxlib.h"

#include "compat.h"
#include "http.h"
#include "units.h"
#include "util.h"

#define HTTP_MT         "cmpxchg.Http"
#define MAX_BODY        (256u * 1024u * 1024u)  /* RavenDB allows 128 MB values */
#define MAX_HEADERS     (64u * 1024u)   /* every header line of a reply, interim ones too */
#define KEPT_BUFFER     (1024u * 1024u) /* a bigger body buffer is freed after its request */

typedef struct Buffer {
    char *data;
    size_t len, cap, limit;
    int overflow;               /* set when the limit cut the transfer */
} Buffer;

#define MAX_WANTED      8       /* reply headers a backend asks for by name */

/* the request body, read by libcurl from a Lua string on the stack */
typedef struct Upload {
    const char *data;
    size_t len, pos;
} Upload;

typedef struct Http {
    CURL *curl;                 /* NULL once closed */
    Buffer body, headers;
    Upload upload;
    size_t header_bytes;        /* of this request's replies, 1xx ones included */
    char error[CURL_ERROR_SIZE];
    int refuses_in_tls;         /* a failure right after the handshake is a refusal */
    int nwanted;                /* -1: every reply header is reported */
    char *wanted[MAX_WANTED];   /* else only these (lower case) */
} Http;

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;   /* the one global: once-only */

static void curl_init (void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* libcurl's global set-up, once per process whichever thread comes first
** (a store's renewal thread opens transports too); never cleaned up, since
** other libraries in the process may share it */
static void http_global_init (void) {
    pthread_once(&curl_once, curl_init);
}

/*
** {======================================================
** The request body
** =======================================================
*/

static size_t on_read (char *p, size_t size, size_t n, void *ud) {
    Upload *u = (Upload *)ud;
    size_t left = u->len - u->pos, want = size * n;
    if (want > left) want = left;
    memcpy(p, u->data + u->pos, want);
    u->pos += want;
    return want;
}

/*
** libcurl sends a request again by itself when a kept-alive connection it
** reused dies before any reply byte: for a write whose first copy reached the
** server that would apply it twice, and report the second outcome as the
** only one (an etcd txn applied, then "compare failed"). It must rewind the
** body to do so, and this refuses: the request then fails (a `connect`
** error, whose outcome the callers treat as unknown) and the backend decides.
*/
static int on_seek (void *ud, curl_off_t offset, int origin) {
    (void)ud; (void)offset; (void)origin;
    return CURL_SEEKFUNC_FAIL;
}

/* }====================================================== */

/*
** {======================================================
** Buffers (filled from libcurl's callbacks: no Lua here)
** =======================================================
*/

static size_t buffer_append (Buffer *b, const char *p, size_t n) {
    if (b->len + n > b->limit) {
        b->overflow = 1;
        return 0;               /* makes libcurl abort with CURLE_WRITE_ERROR */
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        char *d;
        while (cap < b->len + n + 1) cap *= 2;
        if (cap > b->limit + 1) cap = b->limit + 1;     /* never twice the limit */
        d = (char *)realloc(b->data, cap);
        if (d == NULL) { b->overflow = 1; return 0; }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

static void buffer_reset (Buffer *b) {
    b->len = 0;
    b->overflow = 0;
    if (b->data) b->data[0] = '\0';
}

static void buffer_free (Buffer *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/*
** After a request: a buffer grown by one big reply is not kept for the life
** of the handle (a store keeps its handles until it is closed).
*/
static void buffer_trim (Buffer *b) {
    if (b->cap > KEPT_BUFFER) buffer_free(b);
}

static size_t on_body (char *p, size_t size, size_t n, void *ud) {
    return buffer_append(&((Http *)ud)->body, p, size * n);
}

static size_t on_header (char *p, size_t size, size_t n, void *ud) {
    Http *h = (Http *)ud;
    Buffer *b = &h->headers;
    /* the bound counts every response: endless 100 Continues are too large */
    h->header_bytes += size * n;
    if (h->header_bytes > MAX_HEADERS) {
        b->overflow = 1;
        return 0;
    }
    /* a new status line starts a new response (after a 100 Continue, say):
    ** only the last response's headers are reported */
    if (size * n >= 5 && memcmp(p, "HTTP/", 5) == 0)
        buffer_reset(b);
    return buffer_append(b, p, size * n);
}

/* }====================================================== */

/*
** {======================================================
** Object life cycle
** =======================================================
*/

static Http *check_http (lua_State *L) {
    Http *h = (Http *)luaL_checkudata(L, 1, HTTP_MT);
    if (h->curl == NULL)
        luaL_error(L, "attempt to use a closed transport");
    return h;
}

CURL *cx_http_handle (lua_State *L, int idx) {
    Http *h = (Http *)luaL_checkudata(L, idx, HTTP_MT);
    if (h->curl == NULL)
        luaL_error(L, "attempt to use a closed transport");
    return h->curl;
}

static int http_gc (lua_State *L) {
    Http *h = (Http *)luaL_checkudata(L, 1, HTTP_MT);
    CURL *curl = h->curl;
    if (curl != NULL) {
        int i;
        h->curl = NULL;         /* closed before anything is freed */
        curl_easy_cleanup(curl);
        buffer_free(&h->body);
        buffer_free(&h->headers);
        for (i = 0; i < h->nwanted; i++) free(h->wanted[i]);
        h->nwanted = 0;
    }
    return 0;
}

static int http_close (lua_State *L) {
    http_gc(L);
    lua_pushboolean(L, 1);
    return 1;
}

static int http_tostring (lua_State *L) {
    Http *h = (Http *)luaL_checkudata(L, 1, HTTP_MT);
    if (h->curl == NULL) lua_pushliteral(L, HTTP_MT " (closed)");
    else lua_pushfstring(L, HTTP_MT " %p", (void *)h);
    return 1;
}

/* reads string field `name` of the table at `idx`, or NULL */
static const char *field_string (lua_State *L, int idx, const char *name) {
    const char *s;
    lua_getfield(L, idx, name);
    if (lua_isnil(L, -1)) { lua_pop(L, 1); return NULL; }
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "option '%s' must be a string", name);
    s = lua_tostring(L, -1);
    lua_pop(L, 1);              /* still referenced by the table */
    return s;
}

/*
** Reads option reply_headers (an array of lower-case names) of the table at
** 1 into h: the only reply headers request() will report. Reporting only
** what a backend reads saves a dozen Lua strings per request.
*/
static void read_wanted (lua_State *L, Http *h) {
    int i, n;
    lua_getfield(L, 1, "reply_headers");
    if (lua_isnil(L, -1)) { lua_pop(L, 1); return; }
    luaL_argcheck(L, lua_istable(L, -1), 1, "reply_headers must be an array of names");
    n = (int)lua_rawlen(L, -1);
    luaL_argcheck(L, n <= MAX_WANTED, 1, "reply_headers: at most 8 names");
    h->nwanted = 0;
    for (i = 1; i <= n; i++) {
        size_t len;
        const char *name;
        char *copy;
        lua_rawgeti(L, -1, i);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_argerror(L, 1, "reply_headers must be an array of names");
        name = lua_tolstring(L, -1, &len);
        luaL_argcheck(L, len <= 64, 1, "reply_headers: a name longer than 64 bytes");
        copy = (char *)malloc(len + 1);
        if (copy == NULL) luaL_error(L, "not enough memory");
        memcpy(copy, name, len + 1);
        h->wanted[h->nwanted++] = copy;     /* freed by __gc from here on */
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* whether the reply header `name` (n bytes, lower case) is reported */
static int wanted (const Http *h, const char *name, size_t n) {
    int i;
    if (h->nwanted < 0) return 1;
    for (i = 0; i < h->nwanted; i++)
        if (strlen(h->wanted[i]) == n && memcmp(h->wanted[i], name, n) == 0) return 1;
    return 0;
}

/*
** core.http_new([{connect_timeout = s, tls = {ca =, cert =, key =,
** verify = true}, reply_headers = {name...}, refuses_in_tls = true}]) ->
** Http. The TLS settings stay with the handle (and its kept-alive connection)
** for its whole life. refuses_in_tls = false: the server never refuses a
** client certificate inside TLS (RavenDB answers 403), so a connection that
** fails right after its handshake was dropped (see error_code).
*/
static int http_new (lua_State *L) {
    Http *h;
    lua_Number connect_timeout = 5;
    const char *ca = NULL, *cert = NULL, *key = NULL;
    int verify = 1, refuses_in_tls = 1;
    if (!lua_isnoneornil(L, 1)) {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_getfield(L, 1, "refuses_in_tls");
        if (!lua_isnil(L, -1)) refuses_in_tls = lua_toboolean(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, 1, "connect_timeout");
        connect_timeout = luaL_optnumber(L, -1, 5);
        lua_pop(L, 1);
        luaL_argcheck(L, connect_timeout > 0 && connect_timeout < 86400, 1,
                      "connect_timeout out of range");
        lua_getfield(L, 1, "tls");
        if (!lua_isnil(L, -1)) {
            int t = lua_gettop(L);
            luaL_argcheck(L, lua_istable(L, t), 1, "tls must be a table");
            ca = field_string(L, t, "ca");
            cert = field_string(L, t, "cert");
            key = field_string(L, t, "key");
            lua_getfield(L, t, "verify");
            if (!lua_isnil(L, -1)) verify = lua_toboolean(L, -1);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    http_global_init();
    h = (Http *)cx_newuserdata(L, sizeof(Http));
    memset(h, 0, sizeof *h);
    luaL_setmetatable(L, HTTP_MT);
    h->body.limit = MAX_BODY;
    h->headers.limit = MAX_HEADERS;
    h->nwanted = -1;
    h->refuses_in_tls = refuses_in_tls;
    h->curl = curl_easy_init();
    if (h->curl == NULL)
        return luaL_error(L, "curl_easy_init failed");
    if (lua_istable(L, 1)) read_wanted(L, h);
    curl_easy_setopt(h->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h->curl, CURLOPT_ERRORBUFFER, h->error);
    curl_easy_setopt(h->curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h->curl, CURLOPT_WRITEDATA, (void *)h);
    curl_easy_setopt(h->curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h->curl, CURLOPT_HEADERDATA, (void *)h);
    curl_easy_setopt(h->curl, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(h->curl, CURLOPT_READDATA, (void *)&h->upload);
    curl_easy_setopt(h->curl, CURLOPT_SEEKFUNCTION, on_seek);
    curl_easy_setopt(h->curl, CURLOPT_ACCEPT_ENCODING, "");     /* gzip, deflate... */
    /* a reply that announces more than the cap is refused before it is read */
    curl_easy_setopt(h->curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)MAX_BODY);
    curl_easy_setopt(h->curl, CURLOPT_CONNECTTIMEOUT_MS, (long)(connect_timeout * 1000));
    curl_easy_setopt(h->curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h->curl, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h->curl, CURLOPT_USERAGENT, "lua-cmpxchg");
    curl_easy_setopt(h->curl, CURLOPT_SSL_VERIFYPEER, verify ? 1L : 0L);
    curl_easy_setopt(h->curl, CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L);
    if (ca) curl_easy_setopt(h->curl, CURLOPT_CAINFO, ca);
    if (cert) curl_easy_setopt(h->curl, CURLOPT_SSLCERT, cert);
    if (key) curl_easy_setopt(h->curl, CURLOPT_SSLKEY, key);
    return 1;
}

/* }====================================================== */

/*
** {======================================================
** Requests
** =======================================================
*/

/*
** The error contract's code for a failed transfer. With TLS 1.3 a server
** checks our client certificate (or its absence) only after the handshake
** has completed, then closes with an alert: libcurl reports that as a failed
** send, or as a failed read that names the alert. On a connection made for
** this very request, either one is the server refusing us: "tls", unless
** the server is one that never refuses that way (refuses_in_tls false). A
** read that fails without an alert, after the request went out, is a dropped
** connection ("connect"), whose write may have been applied.
*/
static const char *error_code (const Http *h, CURLcode rc, const char *detail) {
    CURL *curl = h->curl;
    curl_off_t handshake = 0;
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_APPCONNECT_TIME_T, &handshake);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    if (h->refuses_in_tls && handshake > 0 && status == 0 &&
        (rc == CURLE_SEND_ERROR || (rc == CURLE_RECV_ERROR && strstr(detail, "alert"))))
        return "tls";
    switch (rc) {
        case CURLE_OPERATION_TIMEDOUT:
            return "timeout";
        case CURLE_SSL_CONNECT_ERROR: case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CERTPROBLEM: case CURLE_SSL_CIPHER: case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_ISSUER_ERROR: case CURLE_SSL_CRL_BADFILE: case CURLE_SSL_ENGINE_NOTFOUND:
        case CURLE_SSL_ENGINE_SETFAILED: case CURLE_USE_SSL_FAILED:
        case CURLE_SSL_PINNEDPUBKEYNOTMATCH: case CURLE_SSL_INVALIDCERTSTATUS:
            return "tls";
        default:
            return "connect";   /* refused, reset, dropped, unresolvable */
    }
}

/*
** Whether a failed transfer certainly never reached the server: the
** connection was refused (or the name not resolved) before any byte went
** out. A reused connection found dead makes libcurl send a request with no
** body again on a new one (one with a body it may not: on_seek), which may
** then be refused: the first copy may have been read, and
** CURLINFO_REQUEST_SIZE (summed over the whole perform) tells. The etcd
** backend re-sends a write only when this says it was not sent.
*/
static int never_sent (CURL *curl, CURLcode rc) {
    long sent = 0;
    if (rc != CURLE_COULDNT_CONNECT && rc != CURLE_COULDNT_RESOLVE_HOST)
        return 0;
    if (curl_easy_getinfo(curl, CURLINFO_REQUEST_SIZE, &sent) != CURLE_OK)
        return 0;
    return sent == 0;
}

/*
** Adds the headers of table `idx` ({name = value}) to `list`. Returns the list,
** or NULL with *bad set to the offending name when a header is not a pair of
** strings or holds a line break (header injection).
*/
struct curl_slist *cx_http_headers (lua_State *L, int idx, const char **bad) {
    struct curl_slist *list = curl_slist_append(NULL, "Expect:");  /* no 100-continue */
    if (list == NULL || lua_isnoneornil(L, idx)) return list;
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {     /* no Lua allocation in here: nothing raises */
        struct curl_slist *more = NULL;
        size_t nlen, vlen;
        const char *name, *value;
        char *line;
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
            *bad = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
            lua_pop(L, 2);
            curl_slist_free_all(list);
            return NULL;
        }
        name = lua_tolstring(L, -2, &nlen);
        value = lua_tolstring(L, -1, &vlen);
        if (nlen == 0 || strpbrk(name, "\r\n: ") || memchr(value, '\r', vlen) ||
            memchr(value, '\n', vlen) || strlen(name) != nlen || strlen(value) != vlen) {
            *bad = name;        /* header injection or an embedded zero */
            lua_pop(L, 2);
            curl_slist_free_all(list);
            return NULL;
        }
        line = (char *)malloc(nlen + vlen + 3);
        if (line != NULL) {
            memcpy(line, name, nlen);
            memcpy(line + nlen, ": ", 2);
            memcpy(line + nlen + 2, value, vlen + 1);
            more = curl_slist_append(list, line);
            free(line);
        }
        lua_pop(L, 1);          /* the value; the key stays for lua_next */
        if (more == NULL) {
            lua_pop(L, 1);
            curl_slist_free_all(list);
            *bad = "(out of memory)";
            return NULL;
        }
        list = more;
    }
    return list;
}

/*
** Pushes `url` as messages show it, and returns it: the password of a
** user:password@ masked (messages end up in logs) and control characters
** written as \ddd (a URL from a topology may hold a line break).
*/
const char *cx_push_shown_url (lua_State *L, const char *url) {
    const char *start = strstr(url, "://");
    const char *at = NULL, *colon = NULL, *p;
    luaL_Buffer b;
    if (start != NULL) {
        const char *end;
        start += 3;
        end = start + strcspn(start, "/?#");
        for (p = start; p < end; p++)
            if (*p == '@') at = p;
        if (at != NULL) colon = memchr(start, ':', (size_t)(at - start));
    }
    luaL_buffinit(L, &b);
    for (p = url; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;
        if (colon != NULL && p == colon + 1) {
            luaL_addstring(&b, "***");
            p = at - 1;         /* the password is left out */
        } else if (c < 0x20 || c == 0x7f) {
            char esc[8];
            snprintf(esc, sizeof esc, "\\%d", (int)c);
            luaL_addstring(&b, esc);
        } else
            luaL_addchar(&b, (char)c);
    }
    luaL_pushresult(&b);
    return lua_tostring(L, -1);
}

/* pushes the received headers (those wanted) as {lower-case name = value} */
static void push_headers (lua_State *L, const Http *h) {
    const Buffer *hb = &h->headers;
    const char *p = hb->data, *end = hb->data + hb->len;
    lua_createtable(L, 0, h->nwanted < 0 ? 8 : 0);     /* servers send about 8 */
    if (p == NULL) return;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *colon, *v, *vend;
        if (eol == NULL) eol = end;
        colon = memchr(p, ':', (size_t)(eol - p));
        if (colon != NULL && colon > p) {
            char small[64];             /* names are short: no Lua buffer for them */
            size_t i, n = (size_t)(colon - p);
            if (n <= sizeof small) {
                for (i = 0; i < n; i++)
                    small[i] = (char)((p[i] >= 'A' && p[i] <= 'Z') ? p[i] + 32 : p[i]);
                if (!wanted(h, small, n)) { p = eol + 1; continue; }
                lua_pushlstring(L, small, n);
            } else if (h->nwanted >= 0) {   /* longer than any name asked for */
                p = eol + 1;
                continue;
            } else {
                luaL_Buffer name;
                luaL_buffinit(L, &name);
                for (i = 0; i < n; i++)
                    luaL_addchar(&name, (char)((p[i] >= 'A' && p[i] <= 'Z') ? p[i] + 32 : p[i]));
                luaL_pushresult(&name);
            }
            v = colon + 1;
            vend = eol;
            while (v < vend && (*v == ' ' || *v == '\t')) v++;
            while (vend > v && (vend[-1] == '\r' || vend[-1] == ' ')) vend--;
            lua_pushlstring(L, v, (size_t)(vend - v));
            lua_rawset(L, -3);
        }
        p = eol + 1;
    }
}

/*
** The error contract's nil, err, code for a transfer that failed with `rc`.
** Past a bound (MAX_BODY, announced or received, MAX_HEADERS, or libcurl's
** own limit on one header line, which it reports as out of memory) the
** reply is too large: "http", as a server's error answer would be.
*/
static int request_error (lua_State *L, Http *h, CURLcode rc, const char *method,
                          const char *url) {
    const char *detail = rc == CURLE_SEND_FAIL_REWIND   /* on_seek refused a resend */
        ? "the connection closed before a reply, maybe after the request was read "
          "(not sent again: its outcome is unknown)"
        : h->error[0] ? h->error : curl_easy_strerror(rc);
    const char *shown = cx_push_shown_url(L, url);
    const char *code;
    if (h->body.overflow || h->headers.overflow || rc == CURLE_FILESIZE_EXCEEDED ||
        rc == CURLE_OUT_OF_MEMORY)
        return cx_push_error(L, "http", "%s %s: the reply is too large (over 256 MB of body "
                             "or 64 KB of headers): %s", method, shown, detail);
    code = error_code(h, rc, detail);
    if (strcmp(code, "tls") == 0 && rc != CURLE_RECV_ERROR && strstr(detail, "SSL") == NULL)
        return cx_push_error(L, code, "%s %s: the server closed the TLS connection after "
                             "the handshake, refusing our client certificate or its "
                             "absence (%s)", method, shown, detail);
    cx_push_error(L, code, "%s %s: %s", method, shown, detail);
    lua_pushboolean(L, never_sent(h->curl, rc));
    return 4;
}

/*
** http:request(method, url, body, headers, timeout) -> status, body, headers
**                                                   | nil, err, code, unsent
** `body` may be nil; `headers` is {name = value}; `timeout` is in seconds for
** the whole exchange. code: "connect", "timeout" or "tls"; unsent is true
** when the request certainly never reached the server (never_sent).
*/
static int http_request (lua_State *L) {
    Http *h = check_http(L);
    const char *method = luaL_checkstring(L, 2);
    const char *url = luaL_checkstring(L, 3);
    size_t body_len = 0;
    const char *body = luaL_optlstring(L, 4, NULL, &body_len);
    lua_Number timeout = luaL_optnumber(L, 6, 30);
    struct curl_slist *headers;
    const char *bad = NULL;
    CURLcode rc;
    long status = 0;
    luaL_argcheck(L, strcmp(method, "GET") == 0 || strcmp(method, "PUT") == 0 ||
                     strcmp(method, "DELETE") == 0 || strcmp(method, "POST") == 0, 2,
                  "method must be GET, PUT, DELETE or POST");
    luaL_argcheck(L, lua_isnoneornil(L, 5) || lua_istable(L, 5), 5, "table expected");
    luaL_argcheck(L, timeout > 0 && timeout < 86400, 6, "timeout out of range");
    headers = cx_http_headers(L, 5, &bad);
    if (headers == NULL)
        return luaL_argerror(L, 5, lua_pushfstring(L, "bad header '%s'", bad));

    buffer_reset(&h->body);
    buffer_reset(&h->headers);
    h->header_bytes = 0;
    h->error[0] = '\0';
    curl_easy_setopt(h->curl, CURLOPT_URL, url);
    curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, headers);
    /* at least 1 ms: libcurl reads 0 as "no timeout at all" */
    curl_easy_setopt(h->curl, CURLOPT_TIMEOUT_MS, timeout < 0.001 ? 1L : (long)(timeout * 1000));
    curl_easy_setopt(h->curl, CURLOPT_HTTPGET, 1L);     /* resets any earlier body */
    if (body != NULL) {
        h->upload.data = body;          /* argument 4 stays on the stack meanwhile */
        h->upload.len = body_len;
        h->upload.pos = 0;
        curl_easy_setopt(h->curl, CURLOPT_POST, 1L);
        curl_easy_setopt(h->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    curl_easy_setopt(h->curl, CURLOPT_CUSTOMREQUEST,
                     strcmp(method, "GET") == 0 ? NULL : method);
    rc = curl_easy_perform(h->curl);
    curl_easy_setopt(h->curl, CURLOPT_HTTPHEADER, NULL);
    h->upload.data = NULL;
    curl_slist_free_all(headers);   /* freed before anything below can raise */
    if (rc != CURLE_OK) {
        buffer_trim(&h->body);
        return request_error(L, h, rc, method, url);
    }
    curl_easy_getinfo(h->curl, CURLINFO_RESPONSE_CODE, &status);
    lua_pushinteger(L, (lua_Integer)status);
    lua_pushlstring(L, h->body.data ? h->body.data : "", h->body.len);
    buffer_trim(&h->body);
    push_headers(L, h);
    return 3;
}

/* }====================================================== */

static const luaL_Reg http_methods[] = {
    {"request", http_request},
    {"stream", cx_http_stream},
    {"close", http_close},
    {NULL, NULL}
};

static const luaL_Reg http_meta[] = {
    {"__gc", http_gc},
    {"__close", http_gc},
    {"__tostring", http_tostring},
    {NULL, NULL}
};

int http_open (lua_State *L) {
    cx_newclass(L, HTTP_MT, http_meta, http_methods);
    lua_pushcfunction(L, http_new);
    lua_setfield(L, -2, "http_new");
    return 0;
}
