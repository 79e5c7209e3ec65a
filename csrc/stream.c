/*
** stream.c: a reply read line by line while it arrives, for the streaming
** endpoints of a server (an etcd watch: one JSON object per line, the
** connection left open). http:stream(...) starts the request and returns
** once the reply's head is in; stream:read_line(timeout) then gives one
** line at a time. It runs on libcurl's multi interface with one easy handle
** of its own, a copy of the Http's (its TLS settings), so that the transfer
** stays open between reads: curl_easy_perform would only return at its end.
**
** Bounds, as http.c's: the whole exchange ends at its deadline (the timeout
** of http:stream), whatever the server does; a line longer than `max_line`
** ends it with an "http" error ("too large"), and the bytes held unread
** never exceed max_line plus one read: when whole lines fill that room,
** the transfer is paused until they are read (libcurl keeps the one read).
** The callbacks append to C buffers and never call into Lua. The connection is never reused: a stream is closed at
** its end (close, or collection), and the server sees its watch go.
**
** Plain Lua only: it blocks the calling thread while it waits for a line.
** Inside nginx transport/ngx.lua streams over a cosocket.
*/

#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "lua.h"
#include "lauxlib.h"

#include "compat.h"
#include "http.h"
#include "units.h"
#include "util.h"

#define STREAM_MT       "cmpxchg.Stream"
#define MAX_HEAD        (64u * 1024u)   /* as http.c: every header line of a reply */
#define DEFAULT_LINE    (1024u * 1024u)
#define MAX_LINE        (256u * 1024u * 1024u)
#define READ_ROOM       (64u * 1024u)   /* what one read of libcurl may add */

typedef struct Bytes {
    char *data;
    size_t len, cap;
} Bytes;

typedef struct Stream {
    CURL *curl;                 /* NULL once closed */
    CURLM *multi;
    struct curl_slist *headers;
    Bytes head;                 /* the final reply's header lines */
    Bytes in;                   /* body bytes received and not yet returned */
    size_t pos;                 /* where the unreturned part of `in` starts */
    size_t head_bytes;          /* of every reply of this exchange, 1xx ones included */
    size_t max_line;
    double deadline;            /* monotonic: the end of the whole exchange */
    int head_done;              /* the final reply's head is in */
    int done;                   /* the transfer ended (result) */
    int large;                  /* a bound cut the transfer */
    int paused;                 /* the buffer was full of lines: on_body paused libcurl */
    CURLcode result;
    char error[CURL_ERROR_SIZE];
} Stream;

/*
** {======================================================
** Buffers and callbacks (no Lua here)
** =======================================================
*/

/* appends n bytes, never past `limit` bytes held: 0, or -1 (nothing added) */
static int bytes_add (Bytes *b, const char *p, size_t n, size_t limit) {
    if (b->len + n > limit) return -1;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
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

static size_t on_body (char *p, size_t size, size_t n, void *ud) {
    Stream *s = (Stream *)ud;
    size_t len = size * n;
    /* drop what was returned: when it is half the buffer, and always before
       it could push a line within the bound over the cap */
    if (s->pos > 0 && (s->pos * 2 >= s->in.len || s->in.len + len > s->max_line + READ_ROOM)) {
        memmove(s->in.data, s->in.data + s->pos, s->in.len - s->pos);
        s->in.len -= s->pos;
        s->pos = 0;
    }
    if (bytes_add(&s->in, p, len, s->max_line + READ_ROOM) != 0) {
        if (s->in.len > s->pos && memchr(s->in.data + s->pos, '\n', s->in.len - s->pos)) {
            s->paused = 1;      /* whole lines wait to be read: libcurl keeps this part */
            return CURL_WRITEFUNC_PAUSE;
        }
        s->large = 1;
        return 0;               /* libcurl ends the transfer: CURLE_WRITE_ERROR */
    }
    return len;
}

static size_t on_header (char *p, size_t size, size_t n, void *ud) {
    Stream *s = (Stream *)ud;
    size_t len = size * n;
    s->head_bytes += len;
    if (s->head_bytes > MAX_HEAD) {
        s->large = 1;
        return 0;
    }
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        s->head.len = 0;        /* a new reply: only the final one's headers count */
    } else if (len <= 2 && (p[0] == '\r' || p[0] == '\n')) {
        long status = 0;
        curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &status);
        if (status >= 200) s->head_done = 1;
        return len;
    }
    if (bytes_add(&s->head, p, len, MAX_HEAD) != 0) {
        s->large = 1;
        return 0;
    }
    return len;
}

/* }====================================================== */

/*
** {======================================================
** The transfer
** =======================================================
*/

/* runs libcurl once, notes the end of the transfer */
static void perform (Stream *s) {
    int running = 0, left = 0;
    CURLMsg *msg;
    curl_multi_perform(s->multi, &running);
    while ((msg = curl_multi_info_read(s->multi, &left)) != NULL) {
        if (msg->msg == CURLMSG_DONE) {
            s->done = 1;
            s->result = msg->data.result;
        }
    }
}

/*
** Waits for the socket (at most until `until`, monotonic) and runs libcurl:
** 0, or -1 when `until` had passed.
*/
static int step (Stream *s, double until) {
    double now = cx_mono_time();
    int ms;
    if (now >= until) return -1;
    ms = (int)((until - now) * 1000) + 1;
    if (ms > 1000) ms = 1000;   /* libcurl's own timers (its timeout) get their turn */
    curl_multi_poll(s->multi, NULL, 0, ms, NULL);
    perform(s);
    return 0;
}

static void stream_free (Stream *s) {
    CURL *curl = s->curl;
    if (curl == NULL) return;
    s->curl = NULL;             /* closed before anything is freed */
    curl_multi_remove_handle(s->multi, curl);
    curl_easy_cleanup(curl);
    curl_multi_cleanup(s->multi);
    s->multi = NULL;
    curl_slist_free_all(s->headers);
    s->headers = NULL;
    free(s->in.data);
    free(s->head.data);
    s->in.data = s->head.data = NULL;
    s->in.len = s->in.cap = s->head.len = s->head.cap = 0;
}

/* the error contract's code of a transfer that ended with `rc` */
static const char *stream_code (CURLcode rc) {
    switch (rc) {
        case CURLE_OPERATION_TIMEDOUT:
            return "timeout";
        case CURLE_SSL_CONNECT_ERROR: case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CERTPROBLEM: case CURLE_SSL_CIPHER: case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_ISSUER_ERROR: case CURLE_SSL_CRL_BADFILE:
            return "tls";
        default:
            return "connect";
    }
}

/* pushes the error contract for a stream whose transfer failed or was cut */
static int stream_error (lua_State *L, Stream *s, const char *url) {
    const char *shown = url ? cx_push_shown_url(L, url) : "stream";
    if (s->large)
        return cx_push_error(L, "http", "%s: the reply is too large (a line over %d bytes, "
                             "or over 64 KB of headers)", shown, (int)s->max_line);
    if (!s->done)
        return cx_push_error(L, "timeout", "%s: no reply within the timeout", shown);
    return cx_push_error(L, stream_code(s->result), "%s: %s", shown,
                         s->error[0] ? s->error : curl_easy_strerror(s->result));
}

/* }====================================================== */

/* pushes the reply's headers as {lower-case name = value} */
static void push_headers (lua_State *L, const Bytes *b) {
    const char *p = b->data, *end = b->data + b->len;
    lua_createtable(L, 0, 8);
    if (p == NULL) return;
    while (p < end) {
        const char *eol = (const char *)memchr(p, '\n', (size_t)(end - p));
        const char *colon, *v, *vend;
        if (eol == NULL) eol = end;
        colon = (const char *)memchr(p, ':', (size_t)(eol - p));
        if (colon != NULL && colon > p) {
            luaL_Buffer name;
            const char *c;
            luaL_buffinit(L, &name);
            for (c = p; c < colon; c++)
                luaL_addchar(&name, (char)((*c >= 'A' && *c <= 'Z') ? *c + 32 : *c));
            luaL_pushresult(&name);
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
** {======================================================
** Methods
** =======================================================
*/

static Stream *check_stream (lua_State *L) {
    Stream *s = (Stream *)luaL_checkudata(L, 1, STREAM_MT);
    if (s->curl == NULL)
        luaL_error(L, "attempt to use a closed stream");
    return s;
}

/*
** http:stream(method, url, body, headers, timeout [, max_line [, head_timeout]])
** -> stream, status, headers | nil, err, code, unsent. `timeout` (seconds) is
** the deadline of the whole exchange, the stream's reads included; max_line
** (bytes, default 1 MB) bounds each line; head_timeout (default: timeout)
** bounds the wait for the reply's head, so that a server that took the
** connection and answers nothing (a paused process) costs a request's
** timeout, not the whole stream's. Returns once the reply's head is in: its
** body is then read with stream:read_line.
*/
int cx_http_stream (lua_State *L) {
    CURL *base = cx_http_handle(L, 1);
    const char *method = luaL_checkstring(L, 2);
    const char *url = luaL_checkstring(L, 3);
    size_t body_len = 0;
    const char *body = luaL_optlstring(L, 4, NULL, &body_len);
    lua_Number timeout = luaL_optnumber(L, 6, 30);
    lua_Number max_line = luaL_optnumber(L, 7, (lua_Number)DEFAULT_LINE);
    lua_Number head_timeout = luaL_optnumber(L, 8, timeout);
    double head_until;
    const char *bad = NULL;
    Stream *s;
    luaL_argcheck(L, strcmp(method, "GET") == 0 || strcmp(method, "POST") == 0, 2,
                  "method must be GET or POST");
    luaL_argcheck(L, lua_isnoneornil(L, 5) || lua_istable(L, 5), 5, "table expected");
    luaL_argcheck(L, timeout > 0 && timeout < 86400, 6, "timeout out of range");
    luaL_argcheck(L, max_line >= 1 && max_line <= (lua_Number)MAX_LINE, 7,
                  "max_line out of range");
    luaL_argcheck(L, head_timeout > 0 && head_timeout < 86400, 8, "head_timeout out of range");
    s = (Stream *)cx_newuserdata(L, sizeof(Stream));
    memset(s, 0, sizeof *s);
    luaL_setmetatable(L, STREAM_MT);
    s->max_line = (size_t)max_line;
    s->deadline = cx_mono_time() + (double)timeout;
    head_until = cx_mono_time() + (double)head_timeout;
    if (head_until > s->deadline) head_until = s->deadline;
    s->headers = cx_http_headers(L, 5, &bad);
    if (s->headers == NULL)
        return luaL_argerror(L, 5, lua_pushfstring(L, "bad header '%s'", bad));
    s->multi = curl_multi_init();
    s->curl = curl_easy_duphandle(base);   /* the Http's options: TLS, connect timeout */
    if (s->curl == NULL || s->multi == NULL) {
        /* stream_free only frees a stream with a handle: this one may have none */
        if (s->curl != NULL) curl_easy_cleanup(s->curl);
        if (s->multi != NULL) curl_multi_cleanup(s->multi);
        curl_slist_free_all(s->headers);
        s->curl = NULL;
        s->multi = NULL;
        s->headers = NULL;
        return luaL_error(L, "cannot create a libcurl handle");
    }
    curl_easy_setopt(s->curl, CURLOPT_ERRORBUFFER, s->error);
    curl_easy_setopt(s->curl, CURLOPT_URL, url);
    curl_easy_setopt(s->curl, CURLOPT_HTTPHEADER, s->headers);
    curl_easy_setopt(s->curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(s->curl, CURLOPT_WRITEDATA, (void *)s);
    curl_easy_setopt(s->curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(s->curl, CURLOPT_HEADERDATA, (void *)s);
    curl_easy_setopt(s->curl, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000) + 1);
    curl_easy_setopt(s->curl, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)0);   /* no cap: lines are */
    curl_easy_setopt(s->curl, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(s->curl, CURLOPT_HTTPGET, 1L);
    if (body != NULL) {
        curl_easy_setopt(s->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        curl_easy_setopt(s->curl, CURLOPT_COPYPOSTFIELDS, body);
    }
    curl_easy_setopt(s->curl, CURLOPT_CUSTOMREQUEST, strcmp(method, "GET") == 0 ? NULL : method);
    curl_multi_add_handle(s->multi, s->curl);
    perform(s);
    while (!s->head_done && !s->done && !s->large && step(s, head_until) == 0)
        ;
    if (!s->head_done) {
        long sent = 0;
        int unsent;
        curl_easy_getinfo(s->curl, CURLINFO_REQUEST_SIZE, &sent);
        unsent = s->done && sent == 0 && (s->result == CURLE_COULDNT_CONNECT ||
                                          s->result == CURLE_COULDNT_RESOLVE_HOST);
        stream_error(L, s, url);
        stream_free(s);
        lua_pushboolean(L, unsent);
        return 4;
    }
    {
        long status = 0;
        curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE, &status);
        lua_pushinteger(L, (lua_Integer)status);
    }
    push_headers(L, &s->head);
    return 3;
}

/*
** stream:read_line([timeout]) -> line | nil, err, code. Waits at most
** `timeout` seconds (and never past the stream's deadline) for a whole line
** (without its LF and a CR before it). code "timeout" when none came (the
** stream stays usable), "closed" when the reply ended (its last bytes are a
** line of their own if they did not end with LF), else how the transfer
** failed ("connect", "timeout" at the deadline, "http" for a line too long).
*/
static int stream_read_line (lua_State *L) {
    Stream *s = check_stream(L);
    lua_Number timeout = luaL_optnumber(L, 2, 86400);
    double until;
    luaL_argcheck(L, timeout >= 0, 2, "timeout must not be negative");
    until = cx_mono_time() + (double)timeout;
    if (until > s->deadline) until = s->deadline;
    for (;;) {
        size_t unread = s->in.len - s->pos;
        const char *start = s->in.data ? s->in.data + s->pos : NULL;
        const char *lf = start ? (const char *)memchr(start, '\n', unread) : NULL;
        if (lf != NULL) {
            size_t n = (size_t)(lf - start);
            s->pos += n + 1;
            if (n > 0 && start[n - 1] == '\r') n--;
            if (n > s->max_line) { s->large = 1; break; }
            lua_pushlstring(L, start, n);
            return 1;
        }
        if (s->paused) {        /* the lines are read: what libcurl kept comes in now */
            s->paused = 0;
            curl_easy_pause(s->curl, CURLPAUSE_CONT);
            continue;
        }
        if (unread > s->max_line + 1) { s->large = 1; break; }     /* + 1: a CR, its LF to come */
        if (s->large) break;
        if (s->done) {
            if (s->result != CURLE_OK) break;
            if (unread > 0) {               /* the last line, without its LF */
                s->pos = s->in.len;
                lua_pushlstring(L, start, unread);
                return 1;
            }
            return cx_push_error(L, "closed", "stream: the reply ended");
        }
        if (step(s, until) != 0) {
            if (until < s->deadline) return cx_push_error(L, "timeout", "stream: no line yet");
            break;              /* the exchange's deadline */
        }
    }
    return stream_error(L, s, NULL);
}

static int stream_gc (lua_State *L) {
    stream_free((Stream *)luaL_checkudata(L, 1, STREAM_MT));
    return 0;
}

static int stream_close (lua_State *L) {
    stream_gc(L);
    lua_pushboolean(L, 1);
    return 1;
}

static int stream_tostring (lua_State *L) {
    Stream *s = (Stream *)luaL_checkudata(L, 1, STREAM_MT);
    if (s->curl == NULL) lua_pushliteral(L, STREAM_MT " (closed)");
    else lua_pushfstring(L, STREAM_MT " %p", (void *)s);
    return 1;
}

static const luaL_Reg stream_methods[] = {
    {"read_line", stream_read_line},
    {"close", stream_close},
    {NULL, NULL}
};

static const luaL_Reg stream_meta[] = {
    {"__gc", stream_gc},
    {"__close", stream_gc},
    {"__tostring", stream_tostring},
    {NULL, NULL}
};

int stream_open (lua_State *L) {
    cx_newclass(L, STREAM_MT, stream_meta, stream_methods);
    return 0;
}

/* }====================================================== */
