/*
** embedded.c: the embedded store, RavenDB compare-exchange semantics on one
** SQLite file. One global index per file (table cmpxchg_meta, row
** 'last_index') stamps every write of every key and namespace, so indexes
** strictly increase exactly as Raft indexes do on a RavenDB cluster.
**
** Concurrency: WAL lets readers run beside the one writer; every write is
** one BEGIN IMMEDIATE transaction, so the compare and the swap happen under
** the file's write lock and several processes and handles stay consistent.
** The busy timeout bounds how long a write waits for that lock.
*/

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>

#include "lua.h"
#include "lauxlib.h"

#include "compat.h"
#include "keys.h"
#include "units.h"
#include "util.h"

#define EMBEDDED_MT     "cmpxchg.Embedded"
#define APPLICATION_ID  0x636d7078      /* "cmpx": marks files that are ours */
#define SCHEMA_VERSION  1

enum {
    S_BEGIN_WRITE, S_BEGIN_READ, S_COMMIT, S_ROLLBACK,
    S_GET, S_UPSERT, S_DELETE, S_LIST,
    S_META_GET, S_META_SET, S_SWEEP,
    N_STATEMENTS
};

static const char *const statement_sql[N_STATEMENTS] = {
    "BEGIN IMMEDIATE",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SELECT idx, value FROM cmpxchg_items WHERE ns = ?1 AND k = ?2",
    "INSERT INTO cmpxchg_items (ns, k, key, value, idx, expires) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (ns, k) DO UPDATE SET "
        "key = excluded.key, value = excluded.value, idx = excluded.idx, "
        "expires = excluded.expires",
    "DELETE FROM cmpxchg_items WHERE ns = ?1 AND k = ?2",
    /* UTF-8 never holds the byte 0xFF, so k < prefix||x'FF' bounds the prefix */
    "SELECT key, idx, value FROM cmpxchg_items WHERE ns = ?1 AND k >= ?2 "
        "AND k < CAST(?2 || x'FF' AS TEXT) ORDER BY k LIMIT ?4 OFFSET ?3",
    "SELECT value FROM cmpxchg_meta WHERE name = ?1",
    "UPDATE cmpxchg_meta SET value = ?2 WHERE name = ?1",
    "DELETE FROM cmpxchg_items WHERE expires IS NOT NULL AND expires <= ?1",
};

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS cmpxchg_meta ("
    "  name TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID;"
    "INSERT OR IGNORE INTO cmpxchg_meta VALUES ('last_index', 0), "
    "  ('last_sweep', 0.0), ('schema', 1);"
    "CREATE TABLE IF NOT EXISTS cmpxchg_items ("
    "  ns TEXT NOT NULL,"               /* namespace (the database option) */
    "  k TEXT NOT NULL,"                /* folded key: keys are case-insensitive */
    "  key TEXT NOT NULL,"              /* the key as last written */
    "  value TEXT NOT NULL,"            /* JSON text */
    "  idx INTEGER NOT NULL,"
    "  expires REAL,"                   /* epoch seconds, from @expires */
    "  PRIMARY KEY (ns, k)) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS cmpxchg_items_expires "
    "  ON cmpxchg_items (expires) WHERE expires IS NOT NULL;";

typedef struct Embedded {
    sqlite3 *db;                        /* NULL once closed */
    sqlite3_stmt *stmt[N_STATEMENTS];
    char *ns;                           /* namespace, malloc'd */
    char *path;                         /* for tostring and messages */
    double sweep_interval;              /* seconds; negative: never sweep */
    int busy;                           /* inside a call (see guarded) */
} Embedded;

/*
** {======================================================
** Handle life cycle
** =======================================================
*/

static void embedded_release (Embedded *h) {
    sqlite3 *db = h->db;
    int i;
    h->db = NULL;               /* closed before anything is freed */
    for (i = 0; i < N_STATEMENTS; i++) {
        sqlite3_finalize(h->stmt[i]);
        h->stmt[i] = NULL;
    }
    sqlite3_close_v2(db);
    free(h->ns);
    free(h->path);
    h->ns = h->path = NULL;
}

static Embedded *to_embedded (lua_State *L) {
    Embedded *h = (Embedded *)luaL_checkudata(L, 1, EMBEDDED_MT);
    if (h->db == NULL)
        luaL_error(L, "attempt to use a closed store");
    if (h->busy)
        luaL_error(L, "attempt to use a store inside one of its own calls "
                      "(from a finalizer?)");
    return h;
}

/* __gc and __close: never raise, ignore closed handles */
static int embedded_gc (lua_State *L) {
    Embedded *h = (Embedded *)luaL_checkudata(L, 1, EMBEDDED_MT);
    if (h->db != NULL)
        embedded_release(h);
    return 0;
}

static int embedded_close (lua_State *L) {
    Embedded *h = (Embedded *)luaL_checkudata(L, 1, EMBEDDED_MT);
    if (h->busy)        /* its statements are in use further down the C stack */
        return luaL_error(L, "attempt to close a store inside one of its own calls");
    embedded_gc(L);
    lua_pushboolean(L, 1);
    return 1;
}

static int embedded_tostring (lua_State *L) {
    Embedded *h = (Embedded *)luaL_checkudata(L, 1, EMBEDDED_MT);
    if (h->db == NULL)
        lua_pushliteral(L, EMBEDDED_MT " (closed)");
    else
        lua_pushfstring(L, EMBEDDED_MT " (%s) %p", h->path, (void *)h);
    return 1;
}

/* }====================================================== */

/*
** {======================================================
** Statements and errors
** =======================================================
*/

/* ends a transaction that an error left open */
static void rollback_open (Embedded *h) {
    if (!sqlite3_get_autocommit(h->db))
        sqlite3_step(h->stmt[S_ROLLBACK]), sqlite3_reset(h->stmt[S_ROLLBACK]);
}

/*
** The error contract for a failed SQLite call; rolls back an open write
** first, so that nothing here that can raise runs inside the transaction.
*/
static int push_sqlite_error (lua_State *L, Embedded *h, int rc) {
    char msg[256];
    int primary = rc & 0xFF;
    /* copied before ROLLBACK replaces it; a reset since may have already */
    snprintf(msg, sizeof msg, "%s", (sqlite3_errcode(h->db) & 0xFF) == primary
             ? sqlite3_errmsg(h->db) : sqlite3_errstr(rc));
    rollback_open(h);
    if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED)
        return cx_push_error(L, "timeout", "%s is locked by another writer (%s)",
                             h->path, msg);
    return cx_push_error(L, "io", "%s: %s", h->path, msg);
}

/* runs a statement that returns no rows (BEGIN, COMMIT, ...) */
static int run (Embedded *h, int which) {
    sqlite3_stmt *s = h->stmt[which];
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? SQLITE_OK : rc;
}

static void bind_key (Embedded *h, sqlite3_stmt *s, const char *folded, size_t len) {
    sqlite3_bind_text(s, 1, h->ns, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, folded, (int)len, SQLITE_TRANSIENT);
}

/*
** Column `i` of the row `s` is on, as text of *len bytes. NULL when SQLite
** could not allocate it: the columns read so are NOT NULL, so nothing else
** gives NULL, and a NULL taken for "" answered "stored value is not JSON".
*/
static const char *column_text (sqlite3_stmt *s, int i, size_t *len) {
    const char *text = (const char *)sqlite3_column_text(s, i);
    *len = (size_t)sqlite3_column_bytes(s, i);
    return text;
}

static int meta_get (Embedded *h, const char *name, double *num,
                     sqlite3_int64 *integer) {
    sqlite3_stmt *s = h->stmt[S_META_GET];
    int rc;
    if (num) *num = 0;
    if (integer) *integer = 0;
    sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        if (num) *num = sqlite3_column_double(s, 0);
        if (integer) *integer = sqlite3_column_int64(s, 0);
        rc = SQLITE_OK;
    }
    else if (rc == SQLITE_DONE)
        rc = SQLITE_CORRUPT;    /* the row is created with the schema */
    sqlite3_reset(s);
    return rc;
}

static int meta_set_int (Embedded *h, const char *name, sqlite3_int64 v) {
    sqlite3_stmt *s = h->stmt[S_META_SET];
    sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, v);
    return run(h, S_META_SET);
}

static int meta_set_double (Embedded *h, const char *name, double v) {
    sqlite3_stmt *s = h->stmt[S_META_SET];
    sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
    sqlite3_bind_double(s, 2, v);
    return run(h, S_META_SET);
}

/*
** Deletes every item whose @expires has passed, in all namespaces, as
** RavenDB's cluster observer does; like its Raft delete command the sweep
** takes one index when it removed anything. Runs inside a write transaction.
*/
static int sweep_expired (Embedded *h, double now, int *removed) {
    sqlite3_int64 last = 0;
    int rc, n;
    sqlite3_bind_double(h->stmt[S_SWEEP], 1, now);
    rc = run(h, S_SWEEP);
    if (rc != SQLITE_OK) return rc;
    n = sqlite3_changes(h->db);
    if (n > 0) {
        if ((rc = meta_get(h, "last_index", NULL, &last)) != SQLITE_OK ||
            (rc = meta_set_int(h, "last_index", last + 1)) != SQLITE_OK)
            return rc;
    }
    if (removed) *removed = n;
    return meta_set_double(h, "last_sweep", now);
}

/* sweeps when the configured period has passed since the file's last sweep */
static int sweep_if_due (Embedded *h) {
    double now = cx_wall_time(), last = 0;
    int rc;
    if (h->sweep_interval < 0) return SQLITE_OK;
    if ((rc = meta_get(h, "last_sweep", &last, NULL)) != SQLITE_OK)
        return rc;
    if (now - last < h->sweep_interval) return SQLITE_OK;
    return sweep_expired(h, now, NULL);
}

/*
** Starts a write: rolls back a transaction left open (none should be:
** every error path ends its own, see guarded), takes the write lock,
** sweeps when due, and reads the current global index.
*/
static int begin_write (Embedded *h, sqlite3_int64 *last) {
    int rc;
    if (!sqlite3_get_autocommit(h->db))
        run(h, S_ROLLBACK);
    if ((rc = run(h, S_BEGIN_WRITE)) != SQLITE_OK) return rc;
    if ((rc = sweep_if_due(h)) != SQLITE_OK) return rc;
    return meta_get(h, "last_index", NULL, last);
}

/* }====================================================== */

/*
** {======================================================
** Operations
** =======================================================
*/

/*
** Every call that pushes Lua values while a statement is stepped or a
** transaction is open does that work in `body`, run protected by
** guarded(): a Lua API call that allocates can raise (a memory error) or
** run finalizers. A raise there used to leave a statement stopped
** mid-step, so that the next call stepped on from where it stopped (a
** create-only put found no row and overwrote the key; a list went on with
** another prefix), and a transaction open, holding the file's write lock.
** guarded() resets every statement and rolls back before the error goes
** on. A finalizer that uses the store while it is inside such a call would
** rebind its statements under it: that call raises instead.
*/

/* one call's checked arguments, for its protected part */
typedef struct Call {
    Embedded *h;
    const char *key;                    /* as given, stored as written */
    char k[CX_MAX_KEY_BYTES];           /* folded key or prefix */
    size_t klen;
    const char *json;
    size_t jlen;
    sqlite3_int64 index;
    int has_expires;
    double expires;
    lua_Integer start, page;            /* list */
} Call;

/* what an error left: every statement reset, no transaction open */
static void reset_all (Embedded *h) {
    int i;
    for (i = 0; i < N_STATEMENTS; i++)
        sqlite3_reset(h->stmt[i]);
    rollback_open(h);
}

/*
** Runs body(c [, value at `arg`]) protected, and returns its results. The
** method's own arguments stay on its stack below, so the strings in `c`
** stay alive.
*/
static int guarded (lua_State *L, lua_CFunction body, Call *c, int arg) {
    int top = lua_gettop(L), status;
    lua_pushcfunction(L, body);
    lua_pushlightuserdata(L, c);
    if (arg != 0) lua_pushvalue(L, arg);
    c->h->busy = 1;
    status = lua_pcall(L, arg != 0 ? 2 : 1, LUA_MULTRET, 0);
    c->h->busy = 0;
    if (status != 0) {
        reset_all(c->h);
        return lua_error(L);
    }
    return lua_gettop(L) - top;
}

static Call *to_call (lua_State *L) {
    return (Call *)lua_touserdata(L, 1);
}

/* checks and folds argument `arg` as a key into c->k */
static void check_key (lua_State *L, int arg, Call *c) {
    size_t len;
    const char *key = luaL_checklstring(L, arg, &len);
    luaL_argcheck(L, len > 0, arg, "empty key");
    luaL_argcheck(L, len <= CX_MAX_KEY_BYTES, arg, "key longer than 512 bytes");
    /* stored as a C string, and no key may hold one: see core.key_problem */
    luaL_argcheck(L, memchr(key, '\0', len) == NULL, arg, "key must not contain a NUL byte");
    luaL_argcheck(L, cx_key_fold(key, len, c->k) == 0, arg, "key is not valid UTF-8");
    c->key = key;
    c->klen = len;
}

static sqlite3_int64 check_index (lua_State *L, int arg) {
    lua_Integer index;
    luaL_argcheck(L, cx_isinteger(L, arg), arg, "integer index expected");
    index = lua_tointeger(L, arg);
    luaL_argcheck(L, index >= 0, arg, "index must not be negative");
    return (sqlite3_int64)index;
}

/*
** Reads the current item of folded key `k` inside the open transaction.
** Pushes its JSON when the key is present, and sets *index (0 when absent).
*/
static int read_current (lua_State *L, Embedded *h, const char *k, size_t klen,
                         sqlite3_int64 *index, int *present) {
    sqlite3_stmt *s = h->stmt[S_GET];
    int rc;
    bind_key(h, s, k, klen);
    rc = sqlite3_step(s);
    *present = rc == SQLITE_ROW;
    *index = 0;
    if (*present) {
        size_t len;
        const char *text;
        *index = sqlite3_column_int64(s, 0);
        text = column_text(s, 1, &len);
        rc = SQLITE_OK;
        if (text != NULL) lua_pushlstring(L, text, len);
        else *present = 0, rc = SQLITE_NOMEM;
    }
    else if (rc == SQLITE_DONE)
        rc = SQLITE_OK;
    sqlite3_reset(s);
    return rc;
}

/*
** The compare and the swap of a put, in one write transaction: index 0
** creates only; N replaces only when the current index is N (so a non-zero
** index never creates an absent key). Sets *swapped, and *result to the new
** index, or to the current one (0: absent) when the compare failed; then the
** current JSON is on L's stack if *present.
*/
static int cas_put (Embedded *h, lua_State *L, const char *k, size_t klen, const char *key,
                    const char *json, size_t jlen, sqlite3_int64 index, int has_expires,
                    double expires, sqlite3_int64 *result, int *swapped, int *present) {
    sqlite3_stmt *s = h->stmt[S_UPSERT];
    sqlite3_int64 last = 0;
    int rc;
    *swapped = 0;
    if ((rc = begin_write(h, &last)) != SQLITE_OK ||
        (rc = read_current(L, h, k, klen, result, present)) != SQLITE_OK)
        return rc;
    if (index == 0 ? *present : (!*present || *result != index))
        return run(h, S_COMMIT);    /* keeps a sweep that ran in this transaction */
    if (*present) lua_pop(L, 1);
    *present = 0;
    bind_key(h, s, k, klen);
    sqlite3_bind_text(s, 3, key, (int)strlen(key), SQLITE_STATIC);
    sqlite3_bind_text(s, 4, json, (int)jlen, SQLITE_STATIC);
    sqlite3_bind_int64(s, 5, last + 1);
    if (has_expires) sqlite3_bind_double(s, 6, expires);
    else sqlite3_bind_null(s, 6);
    if ((rc = run(h, S_UPSERT)) != SQLITE_OK ||
        (rc = meta_set_int(h, "last_index", last + 1)) != SQLITE_OK ||
        (rc = run(h, S_COMMIT)) != SQLITE_OK)
        return rc;
    *swapped = 1;
    *result = last + 1;
    return SQLITE_OK;
}

/* pushes false, current index, current JSON (or nil) over the JSON on top */
static int push_compare_failed (lua_State *L, sqlite3_int64 current, int present) {
    if (!present) lua_pushnil(L);
    lua_pushboolean(L, 0);
    lua_insert(L, -2);
    lua_pushinteger(L, (lua_Integer)current);
    lua_insert(L, -2);
    return 3;
}

static int put_body (lua_State *L) {
    Call *c = to_call(L);
    sqlite3_int64 result = 0;
    int present = 0, swapped = 0, rc;
    lua_settop(L, 0);
    rc = cas_put(c->h, L, c->k, c->klen, c->key, c->json, c->jlen, c->index,
                 c->has_expires, c->expires, &result, &swapped, &present);
    if (rc != SQLITE_OK)
        return push_sqlite_error(L, c->h, rc);
    if (!swapped)
        return push_compare_failed(L, result, present);
    lua_pushboolean(L, 1);
    lua_pushinteger(L, (lua_Integer)result);
    return 2;
}

/*
** h:put(key, json, index [, expires]) -> true, new index
**                                      | false, current index, current JSON
** (0, nil when the key is absent)
*/
static int embedded_put (lua_State *L) {
    Call c;
    c.h = to_embedded(L);
    check_key(L, 2, &c);
    c.json = luaL_checklstring(L, 3, &c.jlen);
    c.index = check_index(L, 4);
    c.has_expires = !lua_isnoneornil(L, 5);
    c.expires = c.has_expires ? (double)luaL_checknumber(L, 5) : 0;
    lua_settop(L, 5);
    return guarded(L, put_body, &c, 0);
}

static int delete_body (lua_State *L) {
    Call *c = to_call(L);
    Embedded *h = c->h;
    sqlite3_int64 last, current;
    int present, rc;
    lua_settop(L, 0);
    if ((rc = begin_write(h, &last)) != SQLITE_OK ||
        (rc = read_current(L, h, c->k, c->klen, &current, &present)) != SQLITE_OK)
        return push_sqlite_error(L, h, rc);
    if (!present || current != c->index) {
        if ((rc = run(h, S_COMMIT)) != SQLITE_OK)
            return push_sqlite_error(L, h, rc);
        return push_compare_failed(L, current, present);
    }
    bind_key(h, h->stmt[S_DELETE], c->k, c->klen);
    if ((rc = run(h, S_DELETE)) != SQLITE_OK ||
        (rc = meta_set_int(h, "last_index", last + 1)) != SQLITE_OK ||
        (rc = run(h, S_COMMIT)) != SQLITE_OK)
        return push_sqlite_error(L, h, rc);
    lua_pushboolean(L, 1);
    lua_pushinteger(L, (lua_Integer)(last + 1));
    lua_pushvalue(L, 1);        /* the deleted JSON */
    return 3;
}

/*
** h:delete(key, index) -> true, new index, deleted JSON
**                       | false, current index, current JSON (0, nil: absent)
*/
static int embedded_delete (lua_State *L) {
    Call c;
    c.h = to_embedded(L);
    check_key(L, 2, &c);
    c.index = check_index(L, 3);
    lua_settop(L, 3);
    return guarded(L, delete_body, &c, 0);
}

static int get_body (lua_State *L) {
    Call *c = to_call(L);
    sqlite3_int64 index;
    int present, rc;
    lua_settop(L, 0);
    if ((rc = read_current(L, c->h, c->k, c->klen, &index, &present)) != SQLITE_OK)
        return push_sqlite_error(L, c->h, rc);
    if (!present) lua_pushnil(L);
    lua_pushinteger(L, (lua_Integer)index);
    lua_insert(L, -2);
    return 2;
}

/*
** A get without the protected call, for the common case (a read is most of
** what stores do, and the protected call costs some 5-10% of one): a value
** of up to SMALL_VALUE bytes is copied out and the statement reset before
** anything is pushed, so nothing can raise while it is stepped. Returns -1
** when the value is larger: the caller reads it again, protected.
*/
#define SMALL_VALUE 1024

static int get_small (lua_State *L, Call *c) {
    sqlite3_stmt *s = c->h->stmt[S_GET];
    char value[SMALL_VALUE];
    sqlite3_int64 index = 0;
    size_t len = 0;
    int rc;
    bind_key(c->h, s, c->k, c->klen);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        const char *text = column_text(s, 1, &len);
        if (text == NULL)
            rc = SQLITE_NOMEM;
        else if (len > sizeof value) {
            sqlite3_reset(s);
            return -1;
        }
        else {
            index = sqlite3_column_int64(s, 0);
            memcpy(value, text, len);
        }
    }
    sqlite3_reset(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return push_sqlite_error(L, c->h, rc);
    lua_pushinteger(L, (lua_Integer)index);
    if (rc == SQLITE_ROW) lua_pushlstring(L, value, len);
    else lua_pushnil(L);
    return 2;
}

/* h:get(key) -> index, JSON | 0, nil when absent */
static int embedded_get (lua_State *L) {
    Call c;
    int n;
    c.h = to_embedded(L);
    check_key(L, 2, &c);
    lua_settop(L, 2);
    if ((n = get_small(L, &c)) >= 0)
        return n;
    return guarded(L, get_body, &c, 0);
}

/* get_many's protected part: body(c, keys) */
static int get_many_body (lua_State *L) {
    Embedded *h = to_call(L)->h;
    int n = (int)lua_rawlen(L, 2), i, rc;
    lua_settop(L, 2);
    lua_createtable(L, n, 0);       /* 3: indexes */
    lua_createtable(L, n, 0);       /* 4: jsons */
    if ((rc = run(h, S_BEGIN_READ)) != SQLITE_OK)
        return push_sqlite_error(L, h, rc);
    for (i = 1; i <= n; i++) {
        char k[CX_MAX_KEY_BYTES];
        size_t len;
        sqlite3_int64 index;
        int present;
        lua_rawgeti(L, 2, i);
        len = lua_rawlen(L, -1);
        cx_key_fold(lua_tostring(L, -1), len, k);
        lua_pop(L, 1);
        if ((rc = read_current(L, h, k, len, &index, &present)) != SQLITE_OK)
            return push_sqlite_error(L, h, rc);
        if (!present) lua_pushboolean(L, 0);
        lua_rawseti(L, 4, i);
        lua_pushinteger(L, (lua_Integer)index);
        lua_rawseti(L, 3, i);
    }
    if ((rc = run(h, S_COMMIT)) != SQLITE_OK)
        return push_sqlite_error(L, h, rc);
    return 2;
}

/*
** h:get_many({k1, k2, ...}) -> indexes, jsons: two arrays in the order of the
** keys (index 0 and false for an absent key), read from one snapshot.
*/
static int embedded_get_many (lua_State *L) {
    Call c;
    int n, i;
    c.h = to_embedded(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    n = (int)lua_rawlen(L, 2);
    for (i = 1; i <= n; i++) {      /* check every key before any I/O */
        size_t len;
        const char *key;
        lua_rawgeti(L, 2, i);
        if (lua_type(L, -1) != LUA_TSTRING)     /* before tolstring converts it */
            return luaL_argerror(L, 2, lua_pushfstring(L, "string expected at position %d", i));
        key = lua_tolstring(L, -1, &len);
        if (len == 0 || len > CX_MAX_KEY_BYTES || memchr(key, '\0', len) != NULL ||
            cx_key_fold(key, len, c.k) != 0)
            return luaL_argerror(L, 2, lua_pushfstring(L, "invalid key at position %d", i));
        lua_pop(L, 1);
    }
    lua_settop(L, 2);
    return guarded(L, get_many_body, &c, 2);
}

static int list_body (lua_State *L) {
    Call *c = to_call(L);
    Embedded *h = c->h;
    sqlite3_stmt *s = h->stmt[S_LIST];
    int rc, n = 0;
    lua_settop(L, 0);
    lua_newtable(L);
    bind_key(h, s, c->k, c->klen);
    sqlite3_bind_int64(s, 3, (sqlite3_int64)c->start);
    sqlite3_bind_int64(s, 4, c->page < 0 ? -1 : (sqlite3_int64)c->page);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        size_t klen, jlen;
        const char *key = column_text(s, 0, &klen), *json = column_text(s, 2, &jlen);
        if (key == NULL || json == NULL) {
            rc = SQLITE_NOMEM;
            break;
        }
        lua_createtable(L, 0, 3);
        lua_pushlstring(L, key, klen);
        lua_setfield(L, -2, "key");
        lua_pushinteger(L, (lua_Integer)sqlite3_column_int64(s, 1));
        lua_setfield(L, -2, "index");
        lua_pushlstring(L, json, jlen);
        lua_setfield(L, -2, "json");
        lua_rawseti(L, -2, ++n);
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE)
        return push_sqlite_error(L, h, rc);
    return 1;
}

/*
** h:list(prefix, start, page_size) -> array of {key =, index =, json =},
** ordered by folded key. page_size < 0 means no limit.
*/
static int embedded_list (lua_State *L) {
    Call c;
    size_t plen;
    const char *prefix;
    c.h = to_embedded(L);
    prefix = luaL_checklstring(L, 2, &plen);
    c.start = luaL_optinteger(L, 3, 0);
    c.page = luaL_optinteger(L, 4, -1);
    luaL_argcheck(L, plen <= CX_MAX_KEY_BYTES, 2, "prefix longer than 512 bytes");
    luaL_argcheck(L, memchr(prefix, '\0', plen) == NULL, 2, "prefix must not contain a NUL byte");
    luaL_argcheck(L, cx_key_fold(prefix, plen, c.k) == 0, 2, "prefix is not valid UTF-8");
    luaL_argcheck(L, c.start >= 0, 3, "start must not be negative");
    c.klen = plen;
    lua_settop(L, 4);
    return guarded(L, list_body, &c, 0);
}

/*
** {------------------------------------------------------
** Transactions: several compare-exchange writes, all or none
** -------------------------------------------------------
*/

/* one operation of a transaction, read from its table (see transaction_op) */
typedef struct TxnOp {
    int is_put;
    const char *key;                    /* as given, stored as written */
    char k[CX_MAX_KEY_BYTES];           /* folded */
    size_t klen;
    const char *json;
    size_t jlen;
    sqlite3_int64 index;
    int has_expires;
    double expires;
} TxnOp;

/*
** Reads operation `i` of the array at stack index `ops` into *op, or returns
** why it cannot be one (a static string). The strings stay alive in the
** operation's table, which the array holds.
*/
static const char *transaction_op (lua_State *L, int ops, int i, TxnOp *op) {
    const char *kind, *problem = NULL;
    int t;
    lua_rawgeti(L, ops, i);
    t = lua_gettop(L);
    if (!lua_istable(L, t)) {
        lua_pop(L, 1);
        return "table expected";
    }
    lua_getfield(L, t, "kind");
    kind = lua_tostring(L, -1);
    op->is_put = kind != NULL && strcmp(kind, "put") == 0;
    if (kind == NULL || (!op->is_put && strcmp(kind, "delete") != 0))
        problem = "kind must be \"put\" or \"delete\"";
    lua_getfield(L, t, "key");
    if (problem == NULL) {
        op->key = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &op->klen) : NULL;
        if (op->key == NULL || op->klen == 0 || op->klen > CX_MAX_KEY_BYTES ||
            memchr(op->key, '\0', op->klen) != NULL || cx_key_fold(op->key, op->klen, op->k) != 0)
            problem = "invalid key";
    }
    lua_getfield(L, t, "index");
    if (problem == NULL) {
        if (!cx_isinteger(L, -1) || lua_tointeger(L, -1) < 0)
            problem = "index must be a non-negative integer";
        else
            op->index = (sqlite3_int64)lua_tointeger(L, -1);
    }
    lua_getfield(L, t, "text");
    lua_getfield(L, t, "expires");
    if (problem == NULL && op->is_put) {
        op->json = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &op->jlen) : NULL;
        op->has_expires = !lua_isnil(L, -1);
        op->expires = op->has_expires ? (double)lua_tonumber(L, -1) : 0;
        if (op->json == NULL)
            problem = "a put needs its JSON text";
        else if (op->has_expires && lua_type(L, -1) != LUA_TNUMBER)
            problem = "expires must be a number";
    }
    lua_settop(L, t - 1);
    return problem;
}

/*
** transaction's protected part: body(c, ops). Every compare runs first,
** under the file's write lock; when one fails nothing is written and every
** failed operation is reported. Otherwise every write takes the one new
** index. A delete at index 0 writes nothing: it only checks the key absent.
*/
static int transaction_body (lua_State *L) {
    Embedded *h = to_call(L)->h;
    int n, i, failed = 0, rc;
    sqlite3_int64 last = 0, index;
    TxnOp op;
    lua_settop(L, 2);
    n = (int)lua_rawlen(L, 2);
    lua_newtable(L);                    /* 3: the failures */
    if ((rc = begin_write(h, &last)) != SQLITE_OK)
        return push_sqlite_error(L, h, rc);
    for (i = 1; i <= n; i++) {
        sqlite3_int64 current;
        int present;
        transaction_op(L, 2, i, &op);   /* checked before: cannot fail */
        if ((rc = read_current(L, h, op.k, op.klen, &current, &present)) != SQLITE_OK)
            return push_sqlite_error(L, h, rc);
        if (op.index == 0 ? !present : (present && current == op.index)) {
            if (present) lua_pop(L, 1);
            continue;
        }
        lua_createtable(L, 0, 3);       /* {key =, index =, json =} */
        if (present) {
            lua_insert(L, -2);
            lua_setfield(L, -2, "json");
        }
        lua_pushlstring(L, op.key, op.klen);
        lua_setfield(L, -2, "key");
        lua_pushinteger(L, (lua_Integer)current);
        lua_setfield(L, -2, "index");
        lua_rawseti(L, 3, ++failed);
    }
    if (failed > 0) {
        if ((rc = run(h, S_COMMIT)) != SQLITE_OK)   /* keeps a sweep that ran */
            return push_sqlite_error(L, h, rc);
        lua_pushboolean(L, 0);
        lua_insert(L, 3);
        return 2;
    }
    index = last + 1;
    for (i = 1; i <= n; i++) {
        rc = SQLITE_OK;
        transaction_op(L, 2, i, &op);
        if (op.is_put) {
            sqlite3_stmt *s = h->stmt[S_UPSERT];
            bind_key(h, s, op.k, op.klen);
            sqlite3_bind_text(s, 3, op.key, (int)op.klen, SQLITE_STATIC);
            sqlite3_bind_text(s, 4, op.json, (int)op.jlen, SQLITE_STATIC);
            sqlite3_bind_int64(s, 5, index);
            if (op.has_expires) sqlite3_bind_double(s, 6, op.expires);
            else sqlite3_bind_null(s, 6);
            rc = run(h, S_UPSERT);
        }
        else if (op.index != 0) {
            bind_key(h, h->stmt[S_DELETE], op.k, op.klen);
            rc = run(h, S_DELETE);
        }
        if (rc != SQLITE_OK)
            return push_sqlite_error(L, h, rc);
    }
    if ((rc = meta_set_int(h, "last_index", index)) != SQLITE_OK ||
        (rc = run(h, S_COMMIT)) != SQLITE_OK)
        return push_sqlite_error(L, h, rc);
    lua_pushboolean(L, 1);
    lua_pushinteger(L, (lua_Integer)index);
    return 2;
}

/*
** h:transaction({{kind = "put"|"delete", key =, index =, text =, expires =},
**                ...}) -> true, index
**                       | false, {{key =, index =, json =}, ...}
** (the failed operations, in order: index 0 and no json when absent)
*/
static int embedded_transaction (lua_State *L) {
    Call c;
    int n, i;
    TxnOp op;
    c.h = to_embedded(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    n = (int)lua_rawlen(L, 2);
    luaL_argcheck(L, n > 0, 2, "at least one operation expected");
    for (i = 1; i <= n; i++) {      /* every operation checked before any I/O */
        const char *problem = transaction_op(L, 2, i, &op);
        if (problem != NULL)
            return luaL_argerror(L, 2, lua_pushfstring(L, "operation #%d: %s", i, problem));
    }
    return guarded(L, transaction_body, &c, 2);
}

/* }------------------------------------------------------ */

/* h:sweep() -> number of expired items removed now, whatever the period */
static int embedded_sweep (lua_State *L) {
    Embedded *h = to_embedded(L);
    sqlite3_int64 last = 0;
    int rc, removed = 0;
    if (!sqlite3_get_autocommit(h->db))
        run(h, S_ROLLBACK);
    if ((rc = run(h, S_BEGIN_WRITE)) != SQLITE_OK ||
        (rc = meta_get(h, "last_index", NULL, &last)) != SQLITE_OK ||
        (rc = sweep_expired(h, cx_wall_time(), &removed)) != SQLITE_OK ||
        (rc = run(h, S_COMMIT)) != SQLITE_OK)
        return push_sqlite_error(L, h, rc);
    lua_pushinteger(L, removed);
    return 1;
}

/* h:last_index() -> the file's global index (the last one handed out) */
static int embedded_last_index (lua_State *L) {
    Embedded *h = to_embedded(L);
    sqlite3_int64 last = 0;
    int rc = meta_get(h, "last_index", NULL, &last);
    if (rc != SQLITE_OK)
        return push_sqlite_error(L, h, rc);
    lua_pushinteger(L, (lua_Integer)last);
    return 1;
}

/* }====================================================== */

/*
** {======================================================
** Opening
** =======================================================
*/

static int exec_pragma_wal (sqlite3 *db, int busy_ms) {
    /* switching to WAL needs a moment of exclusive access: when several
    ** processes create the file at once, retry within the busy timeout */
    int waited = 0, rc;
    while ((rc = sqlite3_exec(db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL))
           == SQLITE_BUSY && waited < busy_ms) {
        sqlite3_sleep(10);
        waited += 10;
    }
    return rc;
}

static int read_int (sqlite3 *db, const char *sql, sqlite3_int64 *out) {
    sqlite3_stmt *s;
    int rc = sqlite3_prepare_v2(db, sql, -1, &s, NULL);
    if (rc != SQLITE_OK) return rc;
    rc = sqlite3_step(s);
    *out = rc == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
    sqlite3_finalize(s);
    return rc;
}

/*
** Reads whether the file is ours (or new): *app is its application_id. A
** SQLite file of another application is refused.
*/
static int check_owner (sqlite3 *db, sqlite3_int64 *app, const char **problem) {
    sqlite3_int64 foreign;
    int rc;
    if ((rc = read_int(db, "PRAGMA application_id", app)) != SQLITE_OK ||
        (rc = read_int(db, "SELECT count(*) FROM sqlite_master WHERE "
                       "name NOT LIKE 'cmpxchg\\_%' ESCAPE '\\' AND "
                       "name NOT LIKE 'sqlite\\_%' ESCAPE '\\'", &foreign)) != SQLITE_OK)
        return rc;
    if ((*app != 0 && *app != APPLICATION_ID) || (*app == 0 && foreign > 0)) {
        *problem = "is a SQLite database of another application";
        return SQLITE_ERROR;
    }
    return SQLITE_OK;
}

/*
** Creates the schema when the file is new, checking again under the write
** lock that the file is ours (another process may have written it since).
*/
static int init_schema (sqlite3 *db, const char **problem) {
    sqlite3_int64 app, version;
    int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) return rc;
    if ((rc = check_owner(db, &app, problem)) != SQLITE_OK)
        goto done;
    if ((rc = sqlite3_exec(db, schema_sql, NULL, NULL, NULL)) != SQLITE_OK ||
        (rc = read_int(db, "SELECT value FROM cmpxchg_meta WHERE name = 'schema'",
                       &version)) != SQLITE_OK)
        goto done;
    if (version != SCHEMA_VERSION) {
        *problem = "has a schema version this library does not know";
        rc = SQLITE_ERROR;
        goto done;
    }
    if (app == 0) {
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA application_id = %d", APPLICATION_ID);
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    }
done:
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/*
** opts[field] as a string, or `def`. The value stays on the stack: a number
** is converted there, and that string is referenced nowhere else, so it
** must stay until the open is done (popping it was a use-after-free).
*/
static const char *opt_string (lua_State *L, const char *field, const char *def) {
    size_t len;
    const char *v;
    lua_getfield(L, 2, field);
    if (lua_isnil(L, -1)) return def;
    if ((v = lua_tolstring(L, -1, &len)) == NULL)
        luaL_argerror(L, 2, lua_pushfstring(L, "%s must be a string", field));
    if (strlen(v) != len)       /* it is used as a C string */
        luaL_argerror(L, 2, lua_pushfstring(L, "%s must not contain a NUL byte", field));
    return v;
}

static lua_Number opt_number (lua_State *L, const char *field, lua_Number def) {
    lua_Number v;
    lua_getfield(L, 2, field);
    v = luaL_optnumber(L, -1, def);
    lua_pop(L, 1);
    return v;
}

static char *dup_string (const char *s) {
    size_t n = strlen(s) + 1;
    char *d = (char *)malloc(n);
    if (d != NULL) memcpy(d, s, n);
    return d;
}

/*
** core.embedded_open(path, {namespace =, busy_timeout =, sweep_interval =,
**                           sync = "normal"|"full"}) -> handle | nil, err, code
** busy_timeout in milliseconds, sweep_interval in seconds (< 0: never).
*/
/*
** Opens `path` into the zeroed `h`: WAL, busy timeout, durability, schema,
** prepared statements. Returns an SQLite code; on failure *detail says why
** (valid until h is released) and the caller releases h.
*/
static int embedded_init (Embedded *h, const char *path, const char *ns, int busy_ms,
                          double sweep_interval, const char *sync, const char **detail) {
    const char *problem = NULL;
    char pragma[64], *name;
    sqlite3_int64 app;
    int rc, i;
    h->sweep_interval = sweep_interval;
    h->ns = dup_string(ns);
    h->path = dup_string(path);
    /*
    ** SQLite reads a name that starts with "file:" as a URI (Debian builds
    ** it with SQLITE_USE_URI, which no open flag turns off), so that
    ** "file:x?mode=memory" or "?nolock=1" would change what the store is:
    ** "./" makes it the plain file name it is everywhere else.
    */
    name = (char *)malloc(strlen(path) + 3);
    if (h->ns == NULL || h->path == NULL || name == NULL) {
        free(name);
        *detail = "not enough memory";
        return SQLITE_NOMEM;
    }
    snprintf(name, strlen(path) + 3, "%s%s", strncmp(path, "file:", 5) == 0 ? "./" : "", path);
    rc = sqlite3_open_v2(name, &h->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    free(name);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(h->db, busy_ms);
        snprintf(pragma, sizeof pragma, "PRAGMA synchronous = %s", sync);
        /* another application's file is refused before anything is written */
        if ((rc = check_owner(h->db, &app, &problem)) == SQLITE_OK &&
            (rc = exec_pragma_wal(h->db, busy_ms)) == SQLITE_OK &&
            (rc = sqlite3_exec(h->db, pragma, NULL, NULL, NULL)) == SQLITE_OK &&
            (rc = init_schema(h->db, &problem)) == SQLITE_OK) {
            for (i = 0; i < N_STATEMENTS && rc == SQLITE_OK; i++)
                rc = sqlite3_prepare_v3(h->db, statement_sql[i], -1,
                                        SQLITE_PREPARE_PERSISTENT, &h->stmt[i], NULL);
        }
    }
    if (rc != SQLITE_OK)
        *detail = problem != NULL ? problem
                : h->db != NULL ? sqlite3_errmsg(h->db) : sqlite3_errstr(rc);
    return rc;
}

static int core_embedded_open (lua_State *L) {
    size_t plen;
    const char *path = luaL_checklstring(L, 1, &plen);
    const char *ns, *sync, *detail = NULL;
    lua_Number busy, sweep;
    Embedded *h;
    int rc;
    luaL_argcheck(L, strlen(path) == plen, 1, "path must not contain a NUL byte");
    if (lua_isnoneornil(L, 2)) { lua_settop(L, 1); lua_newtable(L); }
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    ns = opt_string(L, "namespace", "");
    sync = opt_string(L, "sync", "normal");
    busy = opt_number(L, "busy_timeout", 5000);
    sweep = opt_number(L, "sweep_interval", 60);
    luaL_argcheck(L, strcmp(sync, "normal") == 0 || strcmp(sync, "full") == 0, 2,
                  "sync must be \"normal\" or \"full\"");
    luaL_argcheck(L, busy >= 0 && busy <= 86400000, 2, "busy_timeout out of range");
    luaL_argcheck(L, sweep == sweep, 2, "sweep_interval is NaN");

    h = (Embedded *)cx_newuserdata(L, sizeof(Embedded));
    memset(h, 0, sizeof *h);
    luaL_setmetatable(L, EMBEDDED_MT);
    rc = embedded_init(h, path, ns, (int)busy, (double)sweep, sync, &detail);
    if (rc != SQLITE_OK) {
        const char *code = (rc & 0xFF) == SQLITE_BUSY ? "timeout" : "connect";
        lua_pushfstring(L, "cannot open %s: %s", path, detail);
        embedded_release(h);
        return cx_push_error(L, code, "%s", lua_tostring(L, -1));
    }
    return 1;
}

static const luaL_Reg embedded_methods[] = {
    {"put", embedded_put},
    {"get", embedded_get},
    {"get_many", embedded_get_many},
    {"list", embedded_list},
    {"delete", embedded_delete},
    {"transaction", embedded_transaction},
    {"sweep", embedded_sweep},
    {"last_index", embedded_last_index},
    {"close", embedded_close},
    {NULL, NULL}
};

static const luaL_Reg embedded_meta[] = {
    {"__gc", embedded_gc},
    {"__close", embedded_gc},
    {"__tostring", embedded_tostring},
    {NULL, NULL}
};

int embedded_open (lua_State *L) {
    cx_newclass(L, EMBEDDED_MT, embedded_meta, embedded_methods);
    lua_pushcfunction(L, core_embedded_open);
    lua_setfield(L, -2, "embedded_open");
    return 0;
}

/* }====================================================== */
