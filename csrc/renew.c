/*
** renew.c: the auto-renewal thread of plain Lua. One thread per store serves
** every auto-renewed lock of that store, and runs its own lua_State (luv's
** thread model): lua/cmpxchg/renew_worker.lua opens its own store with the
** parent's target and options and writes each lease with lease.renew, the
** same Lua that acquire and the nginx timer use. No protocol lives here.
**
** C keeps the thread, its wait and a mailbox under one mutex:
**   parent -> thread: a lock to renew (its settings as JSON text), the end of
**                     a lock's renewal, stop;
**   thread -> parent: each lock's index, lease end (monotonic), loss, reason.
** Inside nginx none of this is used: renewal there is an ngx.timer chain.
**
** Lifetimes: the Worker is shared by the store's Renewer userdata, each
** lock's Renewal userdata and the thread, counted in `refs`; the last one
** out frees it. So no finalizer ever waits for a request in flight: the
** __gc of a Renewer tells the thread to stop and detaches it, and the __gc
** of a Renewal only marks its lock as no longer renewed.
** Nothing that can raise (any Lua API call that allocates) runs while the
** mutex is held.
*/

#define _GNU_SOURCE     /* dladdr, pthread_condattr_setclock */

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#include "compat.h"
#include "units.h"
#include "util.h"

#define RENEWER_MT  "cmpxchg.Renewer"
#define RENEWAL_MT  "cmpxchg.Renewal"
#define REASON_MAX  300

/* one renewed lock; in the Worker's list, under its mutex */
typedef struct Slot {
    struct Slot *next;
    lua_Integer id;
    char *settings;             /* JSON for the worker; read-only once linked */
    int taken;                  /* the worker has its settings */
    int busy;                   /* a renewal of it is being written */
    int dropped;                /* its Renewal was collected while busy */
    int lost;
    lua_Integer index;
    double valid;               /* lease end on the monotonic clock */
    double due;                 /* its first renewal (monotonic), as the parent sees it */
    lua_Integer renewals;
    char reason[REASON_MAX];
} Slot;

typedef struct Worker {
    pthread_mutex_t mu;
    pthread_cond_t cv;          /* news, stop, the end of a renewal, the thread's end */
    pthread_t thread;
    int refs;                   /* Renewer + thread + Renewals */
    int stop, running;
    int news;                   /* slots linked since the thread last looked */
    lua_Integer last_id;
    Slot *slots;
    char *setup;                /* JSON: the store's target and options */
    char *path, *cpath;         /* the parent's package.path and package.cpath */
    char core[PATH_MAX];        /* this core's file, loaded again by the thread */
} Worker;

/* the state of a lock as Lua sees it */
typedef struct State {
    lua_Integer index, renewals;
    double valid;
    int lost;
    char reason[REASON_MAX];
} State;

typedef struct Renewal {
    Worker *w;                  /* NULL once stopped */
    Slot *slot;
    State last;                 /* the final state, once stopped */
} Renewal;

static char *copy_text (const char *s, size_t n) {
    char *d = (char *)malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/*
** {======================================================
** The Worker: references and slots (callers hold w->mu where said)
** =======================================================
*/

static void worker_free (Worker *w) {
    while (w->slots != NULL) {
        Slot *s = w->slots;
        w->slots = s->next;
        free(s->settings);
        free(s);
    }
    free(w->setup);
    free(w->path);
    free(w->cpath);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

/* drops one reference; the last one frees the Worker */
static void worker_unref (Worker *w) {
    int last;
    pthread_mutex_lock(&w->mu);
    last = --w->refs == 0;
    pthread_mutex_unlock(&w->mu);
    if (last) worker_free(w);
}

/* under mu */
static Slot *find_slot (Worker *w, lua_Integer id) {
    Slot *s;
    for (s = w->slots; s != NULL; s = s->next)
        if (s->id == id) return s;
    return NULL;
}

/* under mu: unlinks and frees `s` */
static void free_slot (Worker *w, Slot *s) {
    Slot **p;
    for (p = &w->slots; *p != NULL; p = &(*p)->next) {
        if (*p == s) {
            *p = s->next;
            break;
        }
    }
    free(s->settings);
    free(s);
}

/* under mu */
static void read_state (const Slot *s, State *out) {
    out->index = s->index;
    out->valid = s->valid;
    out->lost = s->lost;
    out->renewals = s->renewals;
    memcpy(out->reason, s->reason, REASON_MAX);
}

static int push_state (lua_State *L, const State *st) {
    lua_pushinteger(L, st->index);
    lua_pushnumber(L, (lua_Number)st->valid);
    lua_pushboolean(L, st->lost);
    if (st->lost) lua_pushstring(L, st->reason);
    else lua_pushnil(L);
    lua_pushinteger(L, st->renewals);
    return 5;
}

/* }====================================================== */

/*
** {======================================================
** The thread: its own lua_State, running renew_worker.lua
** =======================================================
*/

static Worker *mailbox_worker (lua_State *L) {
    return (Worker *)lua_touserdata(L, lua_upvalueindex(1));
}

/*
** The first lock handed over that the thread has not seen: its id and the
** length of its settings; 0 when none. Under mu.
*/
static lua_Integer first_news (Worker *w, size_t *len) {
    Slot *s;
    for (s = w->slots; s != NULL; s = s->next) {
        if (!s->taken) {
            *len = strlen(s->settings);
            return s->id;
        }
    }
    return 0;
}

/*
** mailbox.wait(seconds) -> stop, news: waits until the parent stops the
** thread, hands over a lock, or `seconds` pass. news: an array of {id =,
** settings =, index =, valid =, due =} for the locks handed over since the
** last call (index and valid: the held index and lease end then; due: when
** the first renewal is due, on the monotonic clock). Each one's
** settings are copied into a buffer allocated with the mutex released, so a
** memory error leaves nothing locked (what is left comes at the next call).
*/
static int mailbox_wait (lua_State *L) {
    Worker *w = mailbox_worker(L);
    lua_Number seconds = luaL_checknumber(L, 1);
    double until = cx_mono_time() + (seconds > 0 ? (seconds < 1e6 ? seconds : 1e6) : 0);
    struct timespec ts;
    lua_Integer id;
    size_t len = 0;
    int stop, n = 0;
    ts.tv_sec = (time_t)until;
    ts.tv_nsec = (long)((until - floor(until)) * 1e9);
    pthread_mutex_lock(&w->mu);
    while (!w->stop && !w->news && cx_mono_time() < until)
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    stop = w->stop;
    w->news = 0;
    id = first_news(w, &len);
    pthread_mutex_unlock(&w->mu);
    lua_pushboolean(L, stop);
    lua_newtable(L);
    while (id != 0) {
        char *text = (char *)cx_newuserdata(L, len + 1);
        lua_Integer this_id = id, index = 0;
        double valid = 0, due = 0;
        Slot *s;
        int found;
        pthread_mutex_lock(&w->mu);
        s = find_slot(w, id);       /* the parent may have ended it meanwhile */
        found = s != NULL;
        if (found) {
            memcpy(text, s->settings, len + 1);
            index = s->index;
            valid = s->valid;
            due = s->due;
            s->taken = 1;
        }
        id = first_news(w, &len);
        pthread_mutex_unlock(&w->mu);
        if (found) {
            lua_createtable(L, 0, 5);
            lua_pushinteger(L, this_id);
            lua_setfield(L, -2, "id");
            lua_pushinteger(L, index);
            lua_setfield(L, -2, "index");
            lua_pushnumber(L, (lua_Number)valid);
            lua_setfield(L, -2, "valid");
            lua_pushnumber(L, (lua_Number)due);
            lua_setfield(L, -2, "due");
            lua_pushlstring(L, text, strlen(text));
            lua_setfield(L, -2, "settings");
            lua_rawseti(L, -3, ++n);
        }
        lua_pop(L, 1);              /* the buffer */
    }
    return 2;
}

/*
** mailbox.claim(id) -> true when the lock still wants renewing (it is then
** busy until publish), false when it does not (forget it).
*/
static int mailbox_claim (lua_State *L) {
    Worker *w = mailbox_worker(L);
    lua_Integer id = luaL_checkinteger(L, 1);
    Slot *s;
    int wanted;
    pthread_mutex_lock(&w->mu);
    s = find_slot(w, id);
    wanted = s != NULL && !s->dropped && !s->lost;
    if (wanted) s->busy = 1;
    else if (s != NULL && s->dropped) free_slot(w, s);
    pthread_mutex_unlock(&w->mu);
    lua_pushboolean(L, wanted);
    return 1;
}

/*
** mailbox.publish(id, index, valid, lost, reason, renewals): the lock's
** state after a renewal (ends its busy time).
*/
static int mailbox_publish (lua_State *L) {
    Worker *w = mailbox_worker(L);
    lua_Integer id = luaL_checkinteger(L, 1);
    lua_Integer index = luaL_checkinteger(L, 2);
    lua_Number valid = luaL_checknumber(L, 3);
    int lost = lua_toboolean(L, 4);
    const char *reason = luaL_optstring(L, 5, "");
    lua_Integer renewals = luaL_checkinteger(L, 6);
    Slot *s;
    pthread_mutex_lock(&w->mu);
    s = find_slot(w, id);
    if (s != NULL && s->dropped) free_slot(w, s);
    else if (s != NULL) {
        s->index = index;
        s->valid = (double)valid;
        s->renewals = renewals;
        if (lost && !s->lost) {
            s->lost = 1;
            snprintf(s->reason, REASON_MAX, "%s", reason);
        }
        s->busy = 0;
    }
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

static const luaL_Reg mailbox_functions[] = {
    {"wait", mailbox_wait},
    {"claim", mailbox_claim},
    {"publish", mailbox_publish},
    {NULL, NULL}
};

/*
** The thread's Lua, in protected mode: the standard libraries, the
** parent's module paths, this very core (so both states run the same C),
** then renew_worker.lua with the mailbox and the store's setup.
*/
static int worker_run (lua_State *L) {
    Worker *w = (Worker *)lua_touserdata(L, 1);
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_pushstring(L, w->path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, w->cpath);
    lua_setfield(L, -2, "cpath");
    lua_getfield(L, -1, "loadlib");
    lua_pushstring(L, w->core);
    lua_pushliteral(L, "luaopen_cmpxchg_core");
    lua_call(L, 2, 2);
    if (lua_isnil(L, -2))
        return luaL_error(L, "cannot load %s: %s", w->core, lua_tostring(L, -1));
    lua_pop(L, 1);
    lua_getfield(L, -2, "preload");
    lua_insert(L, -2);
    lua_setfield(L, -2, "cmpxchg.core");
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cmpxchg.renew_worker");
    lua_call(L, 1, 1);
    lua_newtable(L);
    lua_pushlightuserdata(L, w);
    luaL_setfuncs(L, mailbox_functions, 1);
    lua_pushstring(L, w->setup);
    lua_call(L, 2, 0);
    return 0;
}

/*
** Waits until a lock's first renewal is near (or the thread is stopped): 1
** then, 0 when stopped first. The thread builds its Lua state (a few ms of
** CPU: the standard libraries, the library's modules, the store's open) only
** then, not at once, so that taking an auto-renewed lock costs its caller no
** more than a plain one, even when every core is busy.
*/
#define START_LEAD 0.05         /* seconds before the first renewal is due */

static int wait_first_due (Worker *w) {
    int run;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        double first = 1e300, now = cx_mono_time(), until;
        struct timespec ts;
        Slot *s;
        for (s = w->slots; s != NULL; s = s->next)
            if (!s->taken && s->due < first) first = s->due;
        if (first - START_LEAD <= now) break;
        until = first - START_LEAD < now + 3600 ? first - START_LEAD : now + 3600;
        ts.tv_sec = (time_t)until;
        ts.tv_nsec = (long)((until - floor(until)) * 1e9);
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    }
    run = !w->stop;
    pthread_mutex_unlock(&w->mu);
    return run;
}

static void *worker_main (void *arg) {
    Worker *w = (Worker *)arg;
    char failure[REASON_MAX] = "";
    int run = wait_first_due(w);
    lua_State *L = run ? luaL_newstate() : NULL;
    Slot *s;
    if (!run) {
        /* stopped before a renewal was due: nothing is lost */
    }
    else if (L == NULL)
        snprintf(failure, sizeof failure, "lost: the renewal thread has no memory");
    else {
        lua_pushcfunction(L, worker_run);
        lua_pushlightuserdata(L, w);
        if (lua_pcall(L, 1, 0, 0) != 0)
            snprintf(failure, sizeof failure, "lost: the renewal thread failed: %s",
                     lua_tostring(L, -1) ? lua_tostring(L, -1) : "(no message)");
        lua_close(L);
    }
    /* the end: nothing renews the remaining locks any more */
    pthread_mutex_lock(&w->mu);
    w->running = 0;
    for (s = w->slots; s != NULL; s = s->next) {
        s->busy = 0;
        if (failure[0] != '\0' && !s->lost) {
            s->lost = 1;
            memcpy(s->reason, failure, REASON_MAX);
        }
    }
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    worker_unref(w);
    return NULL;
}

/* }====================================================== */

/*
** {======================================================
** The Lua face: Renewer (one per store), Renewal (one per lock)
** =======================================================
*/

static Worker **check_renewer (lua_State *L) {
    return (Worker **)luaL_checkudata(L, 1, RENEWER_MT);
}

static Worker *to_renewer (lua_State *L) {
    Worker *w = *check_renewer(L);
    if (w == NULL) luaL_error(L, "attempt to use a closed renewer");
    return w;
}

/* tells the thread to stop; with `join`, waits for it */
static void renewer_end (Worker *w, int join) {
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    if (join) pthread_join(w->thread, NULL);
    else pthread_detach(w->thread);
    worker_unref(w);
}

/* __gc and __close: never waits (the thread finishes its request alone) */
static int renewer_gc (lua_State *L) {
    Worker **wp = check_renewer(L);
    Worker *w = *wp;
    if (w != NULL) {
        *wp = NULL;
        renewer_end(w, 0);
    }
    return 0;
}

/* renewer:close() -> true: stops the thread and waits for it; idempotent */
static int renewer_close (lua_State *L) {
    Worker **wp = check_renewer(L);
    Worker *w = *wp;
    if (w != NULL) {
        *wp = NULL;
        renewer_end(w, 1);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int renewer_tostring (lua_State *L) {
    Worker *w = *check_renewer(L);
    if (w == NULL) lua_pushliteral(L, "cmpxchg.Renewer (closed)");
    else lua_pushfstring(L, "cmpxchg.Renewer (%p)", (void *)w);
    return 1;
}

/*
** renewer:add(settings, index, valid [, first]) -> Renewal: renews one more
** lock; settings is JSON text for the worker (key, owner, lease options),
** index the held index, valid the lease end on the monotonic clock and first
** the seconds to its first renewal (0 by default).
*/
static int renewer_add (lua_State *L) {
    Worker *w = to_renewer(L);
    size_t n;
    const char *settings = luaL_checklstring(L, 2, &n);
    lua_Integer index = luaL_checkinteger(L, 3);
    lua_Number valid = luaL_checknumber(L, 4);
    lua_Number first = luaL_optnumber(L, 5, 0);
    Renewal *r = (Renewal *)cx_newuserdata(L, sizeof(Renewal));
    Slot *s;
    memset(r, 0, sizeof *r);
    luaL_setmetatable(L, RENEWAL_MT);
    s = (Slot *)calloc(1, sizeof(Slot));
    if (s == NULL || (s->settings = copy_text(settings, n)) == NULL) {
        free(s);
        return luaL_error(L, "not enough memory");
    }
    s->index = index;
    s->valid = (double)valid;
    s->due = cx_mono_time() + (first > 0 ? (double)first : 0);
    pthread_mutex_lock(&w->mu);
    s->id = ++w->last_id;
    s->next = w->slots;
    w->slots = s;
    w->news = 1;
    w->refs++;
    r->w = w;
    r->slot = s;
    if (!w->running) {          /* the thread has ended: nobody will renew it */
        s->lost = 1;
        snprintf(s->reason, REASON_MAX, "lost: the renewal thread has ended");
    }
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 1;
}

static Renewal *check_renewal (lua_State *L) {
    return (Renewal *)luaL_checkudata(L, 1, RENEWAL_MT);
}

/*
** Ends the renewal of `r`'s lock. With `wait`, waits for a renewal in
** flight and keeps the final state; else (a finalizer) leaves the slot to
** the thread when busy.
*/
static void renewal_end (Renewal *r, int wait) {
    Worker *w = r->w;
    Slot *s = r->slot;
    r->w = NULL;
    r->slot = NULL;
    pthread_mutex_lock(&w->mu);
    while (wait && s->busy && w->running)
        pthread_cond_wait(&w->cv, &w->mu);
    read_state(s, &r->last);
    if (s->busy) s->dropped = 1;        /* the thread frees it when done */
    else free_slot(w, s);
    pthread_mutex_unlock(&w->mu);
    worker_unref(w);
}

static int renewal_gc (lua_State *L) {
    Renewal *r = check_renewal(L);
    if (r->w != NULL) renewal_end(r, 0);
    return 0;
}

/* renewal:state() -> index, lease end (monotonic), lost, reason|nil, renewals */
static int renewal_state (lua_State *L) {
    Renewal *r = check_renewal(L);
    State st;
    if (r->w == NULL) return push_state(L, &r->last);
    pthread_mutex_lock(&r->w->mu);
    read_state(r->slot, &st);
    pthread_mutex_unlock(&r->w->mu);
    return push_state(L, &st);
}

/*
** renewal:stop() -> the final state, as state(): ends the renewal of the
** lock, waiting for a renewal being written (its index is the one a release
** must use); idempotent.
*/
static int renewal_stop (lua_State *L) {
    Renewal *r = check_renewal(L);
    if (r->w != NULL) renewal_end(r, 1);
    return push_state(L, &r->last);
}

static int renewal_tostring (lua_State *L) {
    Renewal *r = check_renewal(L);
    lua_pushfstring(L, "cmpxchg.Renewal (%s)", r->w == NULL ? "stopped" : "running");
    return 1;
}

/*
** The thread runs this library's code to its very last instruction, after
** the Lua states that loaded it may have closed and dlclose'd it (its own
** state's close is one of them): the library is pinned once, so that it is
** never unmapped under a thread (a crash at exit, 1 run of renew_spec in 16).
*/
static pthread_once_t pin_once = PTHREAD_ONCE_INIT;
static int pinned;

static void pin_library (void) {
    Dl_info info;
    if (dladdr((void *)pin_library, &info) != 0 && info.dli_fname != NULL)
        pinned = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE) != NULL;
}

/*
** core.renewer_start(setup) -> Renewer: starts the renewal thread of a
** store; setup is JSON text naming the store (target and options) for
** renew_worker.lua. The thread gets this state's package.path and cpath.
*/
static int renewer_start (lua_State *L) {
    size_t n;
    const char *setup = luaL_checklstring(L, 1, &n);
    const char *path, *cpath;
    Worker **wp, *w;
    Dl_info info;
    pthread_condattr_t ca;
    int rc;
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_getfield(L, -2, "cpath");
    path = lua_tostring(L, -2);
    cpath = lua_tostring(L, -1);
    if (path == NULL || cpath == NULL) return luaL_error(L, "package.path/cpath are not strings");
    if (dladdr((void *)renewer_start, &info) == 0 || info.dli_fname == NULL)
        return luaL_error(L, "cannot find the core's own file");
    pthread_once(&pin_once, pin_library);
    if (!pinned) return luaL_error(L, "cannot pin the core's own file");
    wp = (Worker **)cx_newuserdata(L, sizeof(Worker *));
    *wp = NULL;
    luaL_setmetatable(L, RENEWER_MT);
    w = (Worker *)calloc(1, sizeof(Worker));
    if (w == NULL) return luaL_error(L, "not enough memory");
    /* an absolute name: the process may change its directory meanwhile */
    if (realpath(info.dli_fname, w->core) == NULL)
        snprintf(w->core, sizeof w->core, "%s", info.dli_fname);
    w->setup = copy_text(setup, n);
    w->path = copy_text(path, strlen(path));
    w->cpath = copy_text(cpath, strlen(cpath));
    if (w->setup == NULL || w->path == NULL || w->cpath == NULL) {
        free(w->setup); free(w->path); free(w->cpath); free(w);
        return luaL_error(L, "not enough memory");
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    w->refs = 2;                /* this Renewer and the thread */
    w->running = 1;
    rc = pthread_create(&w->thread, NULL, worker_main, w);
    if (rc != 0) {
        worker_free(w);
        return luaL_error(L, "cannot start the renewal thread: %s", strerror(rc));
    }
    *wp = w;
    return 1;
}

static const luaL_Reg renewer_methods[] = {
    {"add", renewer_add},
    {"close", renewer_close},
    {NULL, NULL}
};

static const luaL_Reg renewer_meta[] = {
    {"__gc", renewer_gc},
    {"__close", renewer_gc},
    {"__tostring", renewer_tostring},
    {NULL, NULL}
};

static const luaL_Reg renewal_methods[] = {
    {"state", renewal_state},
    {"stop", renewal_stop},
    {NULL, NULL}
};

static const luaL_Reg renewal_meta[] = {
    {"__gc", renewal_gc},
    {"__close", renewal_gc},
    {"__tostring", renewal_tostring},
    {NULL, NULL}
};

int renew_open (lua_State *L) {
    cx_newclass(L, RENEWER_MT, renewer_meta, renewer_methods);
    cx_newclass(L, RENEWAL_MT, renewal_meta, renewal_methods);
    lua_pushcfunction(L, renewer_start);
    lua_setfield(L, -2, "renewer_start");
    return 0;
}

/* }====================================================== */
