/*
** floor.c: the physical floor the benchmarks compare cmpxchg with. A bare C
** loop that makes the same requests as the library, with nothing around
** them: the same HTTP requests through one kept-alive libcurl handle with the
** same options (RavenDB, etcd), or the same SQLite transactions with the same
** settings (embedded). What it costs is what any client must pay.
**
**   floor ravendb URL DATABASE PREFIX N [READY GO]
**   floor etcd    URL PREFIX N [READY GO]
**   floor sqlite  PATH PREFIX N [READY GO]
**
** Runs four phases over N keys PREFIX1..PREFIXN: put0 (create), putcas (by
** the index put0 returned), get, delete (by the index putcas returned), and
** prints one line per phase: "phase OPS WALL_S CPU_S FAILED", CPU being
** user+sys of this process (getrusage) during the phase. With READY and GO:
** creates READY once connected and warmed up, then waits for GO to exist; and
** before each phase, with $BENCH_PROCS processes numbered by READY's last
** digits: creates GO.PHASE.ME and waits until GO.PHASE.1..N all exist.
*/

#define _GNU_SOURCE

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>

#include <curl/curl.h>
#include <sqlite3.h>

enum { PUT0, PUTCAS, GET, DEL, NPHASES };
static const char *const phase_name[NPHASES] = { "put0", "putcas", "get", "delete" };

static const char VALUE[] = "{\"n\":42,\"s\":\"bench value\",\"ok\":true}";

static double now_mono (void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds (void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void die (const char *what) {
    fprintf(stderr, "floor: %s\n", what);
    exit(1);
}

static void barrier (const char *ready, const char *go) {
    FILE *f;
    if (ready == NULL) return;
    f = fopen(ready, "w");
    if (f == NULL) die("cannot create the ready file");
    fclose(f);
    while (access(go, F_OK) != 0) {
        struct timespec ts = { 0, 2000000 };
        nanosleep(&ts, NULL);
    }
}

static void wait_file (const char *path) {
    while (access(path, F_OK) != 0) {
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
}

static void phase_barrier (const char *ready, const char *go, const char *phase) {
    char path[4096];
    const char *me, *env = getenv("BENCH_PROCS");
    int i, procs = env ? atoi(env) : 1;
    FILE *f;
    if (ready == NULL) return;
    for (me = ready + strlen(ready); me > ready && me[-1] >= '0' && me[-1] <= '9'; me--) {}
    snprintf(path, sizeof path, "%s.%s.%s", go, phase, me);
    f = fopen(path, "w");
    if (f == NULL) die("cannot create a barrier file");
    fclose(f);
    for (i = 1; i <= procs; i++) {
        snprintf(path, sizeof path, "%s.%s.%d", go, phase, i);
        wait_file(path);
    }
}

/* a random version-4 UUID, as the library sends in raft-request-id */
static void uuid (char out[37]) {
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    int i, j = 0;
    for (i = 0; i < 16; i++) b[i] = (unsigned char)(rand() & 0xff);
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    for (i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out[j++] = '-';
        out[j++] = hex[b[i] >> 4];
        out[j++] = hex[b[i] & 15];
    }
    out[j] = '\0';
}

/*
** {======================================================
** HTTP: one handle, the library's options (csrc/http.c)
** =======================================================
*/

typedef struct Buf { char *data; size_t len, cap; } Buf;

static size_t on_data (char *p, size_t size, size_t n, void *ud) {
    Buf *b = (Buf *)ud;
    size_t len = size * n;
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + len + 1) cap *= 2;
        b->data = (char *)realloc(b->data, cap);
        if (b->data == NULL) return 0;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, len);
    b->len += len;
    b->data[b->len] = '\0';
    return len;
}

static CURL *curl;
static Buf body, head;
static char curl_error[CURL_ERROR_SIZE];

static void http_init (void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    curl = curl_easy_init();
    if (curl == NULL) die("curl_easy_init");
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_error);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, (void *)&body);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_data);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, (void *)&head);
    curl_easy_setopt(curl, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "lua-cmpxchg");
}

/* one exchange; the status (0 on a transport error) */
static long http (const char *method, const char *url, const char *data, size_t len,
                  struct curl_slist *headers) {
    long status = 0;
    body.len = head.len = 0;
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 15000L);
    curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
    if (data != NULL) {
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, data);
    }
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, strcmp(method, "GET") == 0 ? NULL : method);
    if (curl_easy_perform(curl) != CURLE_OK) return 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    return status;
}

/* the integer after `"name":` (optionally quoted) in the reply, or -1 */
static long long json_int (const char *name) {
    const char *p = body.data ? strstr(body.data, name) : NULL;
    if (p == NULL) return -1;
    p += strlen(name);
    while (*p == '"' || *p == ':' || *p == ' ') p++;
    return strtoll(p, NULL, 10);
}

/* }====================================================== */

/*
** {======================================================
** RavenDB: the /databases/{db}/cmpxchg requests of lua/cmpxchg/ravendb.lua
** =======================================================
*/

static int ravendb_op (int phase, const char *base, const char *db, const char *key,
                       long long *index) {
    char url[1024], id[37], etag[64];
    static const char put_body[] = "{\"Object\":{\"n\":42,\"s\":\"bench value\",\"ok\":true}}";
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    long status;
    int ok;
    snprintf(etag, sizeof etag, "Topology-Etag: \"%d\"", 0);
    h = curl_slist_append(h, etag);
    uuid(id);
    switch (phase) {
        case PUT0: case PUTCAS:
            h = curl_slist_append(h, "Content-Type: application/json");
            snprintf(url, sizeof url, "%s/databases/%s/cmpxchg?key=%s&index=%lld"
                     "&raft-request-id=%s", base, db, key, phase == PUT0 ? 0 : *index, id);
            status = http("PUT", url, put_body, sizeof put_body - 1, h);
            ok = status == 200 && strstr(body.data, "\"Successful\":true") != NULL;
            if (ok) *index = json_int("\"Index\"");
            break;
        case GET:
            snprintf(url, sizeof url, "%s/databases/%s/cmpxchg?key=%s", base, db, key);
            status = http("GET", url, NULL, 0, h);
            ok = status == 200 && json_int("\"Index\"") > 0;
            break;
        default:
            snprintf(url, sizeof url, "%s/databases/%s/cmpxchg?key=%s&index=%lld"
                     "&raft-request-id=%s", base, db, key, *index, id);
            status = http("DELETE", url, NULL, 0, h);
            ok = status == 200 && strstr(body.data, "\"Successful\":true") != NULL;
            break;
    }
    curl_slist_free_all(h);
    return ok;
}

/* }====================================================== */

/*
** {======================================================
** etcd: the JSON-gateway txns of lua/cmpxchg/etcd.lua
** =======================================================
*/

static void b64 (const char *in, size_t n, char *out) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, j = 0;
    for (i = 0; i + 2 < n; i += 3) {
        unsigned v = (unsigned)(unsigned char)in[i] << 16 |
                     (unsigned)(unsigned char)in[i + 1] << 8 | (unsigned char)in[i + 2];
        out[j++] = t[v >> 18]; out[j++] = t[(v >> 12) & 63];
        out[j++] = t[(v >> 6) & 63]; out[j++] = t[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)(unsigned char)in[i] << 16;
        if (i + 1 < n) v |= (unsigned)(unsigned char)in[i + 1] << 8;
        out[j++] = t[v >> 18]; out[j++] = t[(v >> 12) & 63];
        out[j++] = i + 1 < n ? t[(v >> 6) & 63] : '=';
        out[j++] = '=';
    }
    out[j] = '\0';
}

static int etcd_op (int phase, const char *base, const char *key, long long *index) {
    char url[1024], k64[1400], env[1024], v64[1400], data[4096], id[37];
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    long status;
    int ok, len;
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Grpc-Metadata-hasleader: true");
    h = curl_slist_append(h, "Grpc-Timeout: 4700m");
    b64(key, strlen(key), k64);
    switch (phase) {
        case PUT0: case PUTCAS: {
            char cmp[256];
            uuid(id);
            snprintf(env, sizeof env, "{\"Key\":\"%s\",\"Write\":\"%s\",\"Object\":%s}",
                     key, id, VALUE);
            b64(env, strlen(env), v64);
            if (phase == PUT0)
                snprintf(cmp, sizeof cmp, "\"target\":\"CREATE\",\"result\":\"EQUAL\","
                         "\"create_revision\":\"0\"");
            else
                snprintf(cmp, sizeof cmp, "\"target\":\"MOD\",\"result\":\"EQUAL\","
                         "\"mod_revision\":\"%lld\"", *index);
            len = snprintf(data, sizeof data, "{\"compare\":[{\"key\":\"%s\",%s}],"
                           "\"success\":[{\"request_put\":{\"key\":\"%s\",\"value\":\"%s\"}}],"
                           "\"failure\":[{\"request_range\":{\"key\":\"%s\"}}]}",
                           k64, cmp, k64, v64, k64);
            snprintf(url, sizeof url, "%s/v3/kv/txn", base);
            status = http("POST", url, data, (size_t)len, h);
            ok = status == 200 && strstr(body.data, "\"succeeded\":true") != NULL;
            if (ok) *index = json_int("\"revision\"");
            break;
        }
        case GET:
            len = snprintf(data, sizeof data, "{\"key\":\"%s\"}", k64);
            snprintf(url, sizeof url, "%s/v3/kv/range", base);
            status = http("POST", url, data, (size_t)len, h);
            ok = status == 200 && strstr(body.data, "\"kvs\"") != NULL;
            break;
        default:
            len = snprintf(data, sizeof data, "{\"compare\":[{\"key\":\"%s\",\"target\":\"MOD\","
                           "\"result\":\"EQUAL\",\"mod_revision\":\"%lld\"}],"
                           "\"success\":[{\"request_delete_range\":{\"key\":\"%s\","
                           "\"prev_kv\":true}}],"
                           "\"failure\":[{\"request_range\":{\"key\":\"%s\"}}]}",
                           k64, *index, k64, k64);
            snprintf(url, sizeof url, "%s/v3/kv/txn", base);
            status = http("POST", url, data, (size_t)len, h);
            ok = status == 200 && strstr(body.data, "\"succeeded\":true") != NULL;
            break;
    }
    curl_slist_free_all(h);
    return ok;
}

/* }====================================================== */

/*
** {======================================================
** SQLite: the schema, settings and transactions of csrc/embedded.c
** =======================================================
*/

enum { Q_BEGIN, Q_COMMIT, Q_META_GET, Q_META_SET, Q_GET, Q_UPSERT, Q_DELETE, NQ };
static const char *const sql[NQ] = {
    "BEGIN IMMEDIATE",
    "COMMIT",
    "SELECT value FROM cmpxchg_meta WHERE name = 'last_index'",
    "UPDATE cmpxchg_meta SET value = ?1 WHERE name = 'last_index'",
    "SELECT idx, value FROM cmpxchg_items WHERE ns = '' AND k = ?1",
    "INSERT INTO cmpxchg_items (ns, k, key, value, idx, expires) "
        "VALUES ('', ?1, ?1, ?2, ?3, NULL) ON CONFLICT (ns, k) DO UPDATE SET "
        "key = excluded.key, value = excluded.value, idx = excluded.idx, "
        "expires = excluded.expires",
    "DELETE FROM cmpxchg_items WHERE ns = '' AND k = ?1",
};
static sqlite3 *db;
static sqlite3_stmt *q[NQ];

static int step (int which) {
    int rc = sqlite3_step(q[which]);
    sqlite3_reset(q[which]);
    return rc == SQLITE_DONE || rc == SQLITE_ROW;
}

static void sqlite_init (const char *path) {
    int i;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL))
        die("sqlite3_open");
    sqlite3_busy_timeout(db, 5000);
    while (sqlite3_exec(db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL) == SQLITE_BUSY)
        sqlite3_sleep(10);
    sqlite3_exec(db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
    sqlite3_exec(db, "BEGIN IMMEDIATE;"
        "CREATE TABLE IF NOT EXISTS cmpxchg_meta (name TEXT PRIMARY KEY, value NOT NULL)"
        " WITHOUT ROWID;"
        "INSERT OR IGNORE INTO cmpxchg_meta VALUES ('last_index', 0), ('last_sweep', 0.0),"
        " ('schema', 1);"
        "CREATE TABLE IF NOT EXISTS cmpxchg_items (ns TEXT NOT NULL, k TEXT NOT NULL,"
        " key TEXT NOT NULL, value TEXT NOT NULL, idx INTEGER NOT NULL, expires REAL,"
        " PRIMARY KEY (ns, k)) WITHOUT ROWID;"
        "CREATE INDEX IF NOT EXISTS cmpxchg_items_expires ON cmpxchg_items (expires)"
        " WHERE expires IS NOT NULL; COMMIT", NULL, NULL, NULL);
    for (i = 0; i < NQ; i++)
        if (sqlite3_prepare_v3(db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &q[i], NULL))
            die(sqlite3_errmsg(db));
}

/* the compare and the swap in one write transaction, as cas_put/embedded_delete do */
static int sqlite_op (int phase, const char *key, long long *index) {
    sqlite3_int64 last, cur = 0;
    int present, ok = 1;
    if (phase == GET) {
        sqlite3_bind_text(q[Q_GET], 1, key, -1, SQLITE_STATIC);
        present = sqlite3_step(q[Q_GET]) == SQLITE_ROW;
        if (present) {
            cur = sqlite3_column_int64(q[Q_GET], 0);
            (void)sqlite3_column_text(q[Q_GET], 1);
        }
        sqlite3_reset(q[Q_GET]);
        return present && cur > 0;
    }
    if (!step(Q_BEGIN)) return 0;
    sqlite3_step(q[Q_META_GET]);
    last = sqlite3_column_int64(q[Q_META_GET], 0);
    sqlite3_reset(q[Q_META_GET]);
    sqlite3_bind_text(q[Q_GET], 1, key, -1, SQLITE_STATIC);
    present = sqlite3_step(q[Q_GET]) == SQLITE_ROW;
    if (present) cur = sqlite3_column_int64(q[Q_GET], 0);
    sqlite3_reset(q[Q_GET]);
    if (phase == PUT0 ? present : (!present || cur != *index)) {
        step(Q_COMMIT);
        return 0;
    }
    if (phase == DEL) {
        sqlite3_bind_text(q[Q_DELETE], 1, key, -1, SQLITE_STATIC);
        ok = step(Q_DELETE);
    } else {
        sqlite3_bind_text(q[Q_UPSERT], 1, key, -1, SQLITE_STATIC);
        sqlite3_bind_text(q[Q_UPSERT], 2, VALUE, -1, SQLITE_STATIC);
        sqlite3_bind_int64(q[Q_UPSERT], 3, last + 1);
        ok = step(Q_UPSERT);
    }
    sqlite3_bind_int64(q[Q_META_SET], 1, last + 1);
    ok = ok && step(Q_META_SET) && step(Q_COMMIT);
    if (ok) *index = last + 1;
    return ok;
}

/* }====================================================== */

int main (int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "", *base = NULL, *dbname = NULL, *prefix;
    const char *ready = NULL, *go = NULL;
    long n, i;
    int p, args;
    long long *index;
    char key[512];
    if (strcmp(mode, "ravendb") == 0 && argc >= 6) {
        base = argv[2]; dbname = argv[3]; args = 4;
        http_init();
    } else if (strcmp(mode, "etcd") == 0 && argc >= 5) {
        base = argv[2]; args = 3;
        http_init();
    } else if (strcmp(mode, "sqlite") == 0 && argc >= 5) {
        args = 3;
        sqlite_init(argv[2]);
    } else {
        fprintf(stderr, "usage: floor ravendb URL DB PREFIX N | etcd URL PREFIX N | "
                        "sqlite PATH PREFIX N  [READY GO]\n");
        return 2;
    }
    prefix = argv[args];
    n = atol(argv[args + 1]);
    if (argc >= args + 4) { ready = argv[args + 2]; go = argv[args + 3]; }
    srand((unsigned)getpid() ^ (unsigned)time(NULL));
    index = (long long *)calloc((size_t)n + 1, sizeof *index);
    if (index == NULL || n <= 0) die("bad N");
    /* warm-up: connection, statement caches, page cache */
    for (i = 0; i < 20; i++) {
        long long w = 0;
        snprintf(key, sizeof key, "%swarm%ld", prefix, i);
        for (p = 0; p < NPHASES; p++) {
            if (base && dbname) ravendb_op(p, base, dbname, key, &w);
            else if (base) etcd_op(p, base, key, &w);
            else sqlite_op(p, key, &w);
        }
    }
    barrier(ready, go);
    for (p = 0; p < NPHASES; p++) {
        double t0, c0;
        phase_barrier(ready, go, phase_name[p]);
        t0 = now_mono();
        c0 = cpu_seconds();
        long failed = 0;
        for (i = 1; i <= n; i++) {
            int ok;
            snprintf(key, sizeof key, "%s%ld", prefix, i);
            if (base && dbname) ok = ravendb_op(p, base, dbname, key, &index[i]);
            else if (base) ok = etcd_op(p, base, key, &index[i]);
            else ok = sqlite_op(p, key, &index[i]);
            if (!ok) failed++;
        }
        printf("phase %s %ld %.6f %.6f %ld\n", phase_name[p], n, now_mono() - t0,
               cpu_seconds() - c0, failed);
    }
    fflush(stdout);
    return 0;
}
