#!/usr/bin/env node
/*
** A RavenDB compare-exchange emulator for the cmpxchg test suite.
**
** It answers the HTTP API that RavenDB clients use for compare-exchange (cmpxchg) items,
** database topology and database creation/deletion, the way a RavenDB 6.x/7.x cluster does.
** Every behaviour is written from the protocol reference, doc/ravendb-protocol.md
** ("ref §N" below), and from the RavenDB server source it and doc/ravendb-server-behaviour.md
** cite; the official npm `ravendb` client referees it (spec/support/ravendb/referee.js,
** spec/integration/ravendb_referee_spec.lua).
**
** Node.js standard library only: no npm dependency and no code shared with any client.
**
** One process serves every node of a pretend cluster: a replicated log with a leader, and one
** state per node that applies the log on its own, possibly late (see "The cluster" below);
** database groups on subsets of the nodes; and a control API on its own loopback port that
** the tests use to reset the state, stop and start nodes, make followers lag, move databases,
** inject faults and switch between older and newer server behaviour.
**
**   node emulator.js [--ports 18080,18081,18082] [--control-port 18090] [--tls-dir DIR]
**                    [--behavior new|old] [--expires-interval SECONDS] [--databases db,other]
**                    [--election-ms MS] [--operation-timeout MS] [--no-http2]
**                    [--ready-file PATH] [--verbose]
**
** Everything listens on 127.0.0.1 only. A port of 0 lets the system pick a free one; the real ports are written to --ready-file
** (JSON {pid, urls, control_url}) once everything listens. The control API is described at
** CONTROL API below.
*/
'use strict';

const http = require('http');
const http2 = require('http2');
const fs = require('fs');
const path = require('path');
const zlib = require('zlib');
const crypto = require('crypto');
const os = require('os');

const SERVER_VERSION = '6.0.105';       // Raven-Server-Version and topology ServerVersion
const NODE_TAGS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';
const HISTORY_LIMIT = 2048;             // Cluster.LogHistoryMaxEntries, newer servers (S-CCFG)
const ELECTION_MS = 300;                // Cluster.ElectionTimeoutInMs: a leaderless pause
const OPERATION_TIMEOUT_MS = 15000;     // Cluster.OperationTimeoutInSec (S-CCFG)
const REQUEST_LOG_LIMIT = 1000;         // GET /state keeps this many requests
const UNKNOWN_ROUTE_LIMIT = 200;
const LOGGED_BODY_CHARS = 4096;         // request bodies in the request log are cut here
const MAX_BODY_BYTES = 64 * 1024 * 1024;
const MAX_KEY_BYTES = 512;              // MaxNumberOfCompareExchangeKeyBytes (ref §2.3, §11)
const JSON_TYPE = 'application/json; charset=utf-8';
const HOST = '127.0.0.1';               // loopback only, nodes and control alike

/* ------------------------------------------------------------------------------------------
** Options
** ---------------------------------------------------------------------------------------- */

/* setInterval takes at most 2^31 - 1 ms (more runs it every millisecond) */
const MAX_TIMER_S = 2147483;

function usage(message) {
    if (message) process.stderr.write(`emulator: ${message}\n`);
    process.stderr.write('usage: emulator.js [--ports P1,P2,...] [--control-port P] [--tls-dir DIR]\n'
        + '                   [--behavior new|old] [--expires-interval S] [--databases a,b]\n'
        + '                   [--election-ms MS] [--operation-timeout MS] [--no-http2]\n'
        + '                   [--ready-file PATH] [--verbose]\n');
    process.exit(2);
}

function parsePort(text) {
    const n = Number(text);
    if (!Number.isInteger(n) || n < 0 || n > 65535) usage(`bad port: ${text}`);
    return n;
}

function parseArgs(argv) {
    const opts = {
        ports: [18080, 18081, 18082],
        controlPort: 18090,
        tlsDir: null,
        behavior: 'new',
        expiresInterval: 60,
        databases: ['db'],
        electionMs: ELECTION_MS,
        operationTimeoutMs: OPERATION_TIMEOUT_MS,
        http2: true,
        readyFile: null,
        verbose: false,
    };
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i];
        const value = () => {
            if (i + 1 >= argv.length) usage(`${arg} needs a value`);
            return argv[++i];
        };
        switch (arg) {
        case '--ports': opts.ports = value().split(',').filter(Boolean).map(parsePort); break;
        case '--control-port': opts.controlPort = parsePort(value()); break;
        case '--tls-dir': opts.tlsDir = value(); break;
        case '--behavior': opts.behavior = value(); break;
        case '--expires-interval': opts.expiresInterval = Number(value()); break;
        case '--databases': opts.databases = value().split(',').filter(Boolean); break;
        case '--election-ms': opts.electionMs = Number(value()); break;
        case '--operation-timeout': opts.operationTimeoutMs = Number(value()); break;
        case '--no-http2': opts.http2 = false; break;
        case '--ready-file': opts.readyFile = value(); break;
        case '--verbose': opts.verbose = true; break;
        case '-h': case '--help': usage(); break;
        default: usage(`unknown option ${arg}`);
        }
    }
    if (opts.ports.length === 0 || opts.ports.length > NODE_TAGS.length) usage('need 1..26 ports');
    if (opts.behavior !== 'new' && opts.behavior !== 'old') usage('--behavior is new or old');
    if (!(opts.expiresInterval >= 0 && opts.expiresInterval <= MAX_TIMER_S)) usage(`--expires-interval must be 0..${MAX_TIMER_S} seconds (0: no periodic cleanup)`);
    if (!(opts.electionMs >= 0)) usage('--election-ms must be a number of milliseconds');
    if (!(opts.operationTimeoutMs > 0)) usage('--operation-timeout must be a positive number of milliseconds');
    return opts;
}

/* ------------------------------------------------------------------------------------------
** .NET-compatible helpers
** ---------------------------------------------------------------------------------------- */

/*
** char.ToLowerInvariant applied to every UTF-16 unit, as the server lowercases storage keys
** (ref §1.1, SRV-KEY; Sparrow ByteStringContext.ToLowerCase works char by char). Simple
** (1:1) case mapping only: a char whose JS lower case is longer stays as it is, except
** U+0130 whose simple mapping is 'i'. Surrogates are left alone, as char-wise mapping does.
*/
function lowerInvariant(s) {
    let out = '';
    for (let i = 0; i < s.length; i++) {
        const c = s.charCodeAt(i);
        if (c < 0x80) {
            out += (c >= 0x41 && c <= 0x5a) ? String.fromCharCode(c + 32) : s[i];
        } else if (c >= 0xd800 && c <= 0xdfff) {
            out += s[i];
        } else if (c === 0x130) {
            out += 'i';
        } else {
            const lower = s[i].toLowerCase();
            out += lower.length === 1 ? lower : s[i];
        }
    }
    return out;
}

/*
** char.IsWhiteSpace: the Unicode space separators (Zs), the line and paragraph separators,
** U+0009..U+000D and U+0085. string.IsNullOrWhiteSpace, which the server's query-string
** helpers use (ref §1), holds for a string of these only. JavaScript's trim() differs: it
** also strips U+FEFF and keeps U+0085.
*/
function isDotNetWhiteSpace(c) {
    return (c >= 0x09 && c <= 0x0d) || c === 0x20 || c === 0x85 || c === 0xa0 || c === 0x1680
        || (c >= 0x2000 && c <= 0x200a) || c === 0x2028 || c === 0x2029 || c === 0x202f
        || c === 0x205f || c === 0x3000;
}

function isNullOrWhiteSpace(s) {
    if (s === null || s === undefined) return true;
    for (let i = 0; i < s.length; i++) if (!isDotNetWhiteSpace(s.charCodeAt(i))) return false;
    return true;
}

/* Voron orders keys by their bytes: compare UTF-8, not UTF-16 (ref §3.1) */
function compareUtf8(a, b) {
    return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/* long.TryParse / int.TryParse: optional blanks and sign, decimal digits, in range */
function parseDotNetInteger(text, bits) {
    const m = /^[ \t]*([+-]?)(\d+)[ \t]*$/.exec(text);
    if (!m) return null;
    const n = BigInt(m[1] + m[2]);
    const limit = 1n << BigInt(bits - 1);
    if (n < -limit || n >= limit) return null;
    return n;
}

/*
** @expires parsing, ref §5 (SRV-EXP TryGetExpires, SRV-FMT DateTimeFormatsToRead):
**   o | yyyy-MM-ddTHH:mm:ss.fffffff | ...fffffffzzz | ...FFFFFFFK | r | ...fffK | ...FFFK
** which together accept an ISO date-time with 0..7 fraction digits and an optional Z or
** +hh:mm offset, or an RFC1123 "r" string. With no zone the time is server-local (ref §5:
** Unspecified kind, then ToUniversalTime). Returns epoch milliseconds (fractional) or null.
*/
const ISO_DATE = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?(Z|[+-]\d{2}:\d{2})?$/;
const RFC1123_DATE = /^(Sun|Mon|Tue|Wed|Thu|Fri|Sat), (\d{2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT$/;
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];

function validCalendar(y, mo, d, h, mi, s) {
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || s > 59) return false;
    return d <= new Date(Date.UTC(y, mo, 0)).getUTCDate();
}

function parseExpires(text) {
    let m = ISO_DATE.exec(text);
    if (m) {
        const [y, mo, d, h, mi, s] = m.slice(1, 7).map(Number);
        if (!validCalendar(y, mo, d, h, mi, s)) return null;
        const fractionMs = m[7] ? Number(`0.${m[7]}`) * 1000 : 0;
        const zone = m[8];
        if (!zone) return new Date(y, mo - 1, d, h, mi, s).getTime() + fractionMs;
        let ms = Date.UTC(y, mo - 1, d, h, mi, s) + fractionMs;
        if (zone !== 'Z') {
            const sign = zone[0] === '-' ? -1 : 1;
            const [oh, om] = zone.slice(1).split(':').map(Number);
            if (oh > 14 || om > 59) return null;
            ms -= sign * (oh * 60 + om) * 60000;
        }
        return ms;
    }
    m = RFC1123_DATE.exec(text);
    if (m) {
        const [d, y, h, mi, s] = [m[2], m[4], m[5], m[6], m[7]].map(Number);
        const mo = MONTHS.indexOf(m[3]) + 1;
        if (!validCalendar(y, mo, d, h, mi, s)) return null;
        const ms = Date.UTC(y, mo - 1, d, h, mi, s);
        if (DAYS[new Date(ms).getUTCDay()] !== m[1]) return null;   // .NET checks the weekday
        return ms;
    }
    return null;
}

/*
** The stored value is the PUT body exactly as sent, minus insignificant white space (the
** server keeps it as blittable JSON and writes it back compact). Keeping the text rather than
** a parsed object preserves member order and number literals (int64 beyond 2^53, 1.50, ...).
*/
class RawJson {
    constructor(text) { this.text = text; }
}

function compactJson(text) {
    let out = '';
    let inString = false;
    for (let i = 0; i < text.length; i++) {
        const ch = text[i];
        if (inString) {
            out += ch;
            if (ch === '\\') out += text[++i];
            else if (ch === '"') inString = false;
        } else if (ch === '"') {
            inString = true;
            out += ch;
        } else if (ch !== ' ' && ch !== '\t' && ch !== '\n' && ch !== '\r') {
            out += ch;
        }
    }
    return out;
}

/* JSON text of a response: plain values plus RawJson pieces spliced in as they are */
function toJson(value) {
    if (value instanceof RawJson) return value.text;
    if (Array.isArray(value)) return `[${value.map(toJson).join(',')}]`;
    if (value !== null && typeof value === 'object') {
        const members = Object.keys(value).filter((k) => value[k] !== undefined);
        return `{${members.map((k) => `${JSON.stringify(k)}:${toJson(value[k])}`).join(',')}}`;
    }
    return JSON.stringify(value === undefined ? null : value);
}

/* ------------------------------------------------------------------------------------------
** Errors: what RavenServerStartup writes for an unhandled exception (ref §7.1, SRV-START):
** {"Url", "Type", "Message", "Error"} with the status from its exception map (ref §7.2).
** ---------------------------------------------------------------------------------------- */

class RavenError extends Error {
    constructor(status, type, message, headers) {
        super(message);
        this.status = status;
        this.type = type;
        this.headers = headers || {};
    }
}

const ArgumentException = (message) => new RavenError(500, 'System.ArgumentException', message);

function errorJson(url, type, message) {
    return {
        Url: url,
        Type: type,
        Message: message,
        // exception.ToString() on the server; the clients take their message from "Error"
        Error: `${type}: ${message}`,
    };
}

function errorResponse(url, err) {
    return {
        status: err.status,
        headers: err.headers,
        body: toJson(errorJson(url, err.type, err.message)),
    };
}

/* ------------------------------------------------------------------------------------------
** The cluster: a replicated log of raft commands, a leader, and one state per node
**
** RavenDB keeps compare-exchange items and database records in its cluster state machine,
** which every node applies from the Rachis (raft) log on its own (ref §2.2; server behaviour
** §1 #3). So here:
**
** * Every write is a raft command. It is committed by the leader, which needs a majority of
**   the nodes running, and gets the next raft index. Committing computes the command's result
**   once, on the committed state (every node applying the same log in the same order computes
**   the same result), and records it in the request-id history (ref §6.4, SRV-HIST): a
**   command whose raft request id is there is not applied again, the first (index, result)
**   is the answer. The history keeps the last 2,048 commands of every kind
**   (Cluster.LogHistoryMaxEntries in the newer ClusterConfiguration, S-CCFG), so cleanups and
**   database record changes push request ids out of it too.
** * Each node applies committed commands to its own state, `lag_ms` after the commit (0:
**   at once; the leader applies at once). A stopped node applies nothing and catches up when
**   it starts again. Reads are served from the receiving node's own state, so a lagging node
**   answers with an older value, index, absence or topology (ref §3, S-H5: GET reads the local
**   cluster state).
** * A write received by any node is sent to the leader and answered once the *receiving*
**   node has applied it (WaitForIndexNotification, S-PUT6). With no leader (an election, or
**   no majority running) it waits for one up to the operation timeout
**   (Cluster.OperationTimeoutInSec, 15 s) and then fails with the server's TimeoutException,
**   408 (SendToLeaderAsyncInternal / ThrowTimeoutException, S-STORE).
** * Stopping the leader, or losing the majority, leaves the cluster without a leader; once a
**   majority runs, an election takes `election_ms` and the next running node leads.
** ---------------------------------------------------------------------------------------- */

/* A node's copy of the cluster state: what it has applied of the log */
class NodeState {
    constructor() {
        this.applied = 0;               // raft index of the last command applied
        this.items = new Map();         // storage key -> {Index, Value: RawJson, ExpiresAt}
        this.databases = new Map();     // lower-cased name -> {name, members, rehabs, etag, ids}
        this.documents = new Map();     // lower(db/id) -> document (see documentKey)
        this.counters = new Map();      // "etag:db", "raft:db" -> the last value handed out
    }

    /* storage key = lower(db + "/" + key) (ref §1.1, SRV-KEY) */
    static storageKey(db, key) {
        return lowerInvariant(`${db}/${key}`);
    }

    database(name) {
        return this.databases.get(lowerInvariant(name)) || null;
    }

    get(db, key) {
        return this.items.get(NodeState.storageKey(db, key)) || null;
    }

    /*
    ** GetCompareExchangeValuesStartsWith (ref §3.1, SRV-GET6): storage keys under
    ** lower(db/prefix) in byte order, `start` skipped, at most `pageSize`; the Key written
    ** back is the storage key without "db/", so lower-cased (ref §3.2). Nothing is filtered:
    ** expired items (ref §5) and rvn-atomic/ guards (ref §10) are listed too. The server
    ** counts pageSize down and stops at zero, so 0 or less lists everything (server
    ** behaviour §1 #10).
    */
    list(db, prefix, start, pageSize) {
        const dbPrefix = lowerInvariant(`${db}/`);
        const wanted = NodeState.storageKey(db, prefix || '');
        const keys = [...this.items.keys()].filter((k) => k.startsWith(wanted)).sort(compareUtf8);
        const from = Math.max(start, 0);
        const count = pageSize <= 0 ? keys.length : pageSize;
        return keys.slice(from, from + count).map((k) => {
            const item = this.items.get(k);
            return { Key: k.slice(dbPrefix.length), Value: item.Value, Index: item.Index };
        });
    }

    /* the items under `db/`, for a database that is deleted */
    dropItemsOf(name) {
        const prefix = lowerInvariant(`${name}/`);
        for (const k of [...this.items.keys()]) if (k.startsWith(prefix)) this.items.delete(k);
        for (const k of [...this.documents.keys()]) if (k.startsWith(prefix)) this.documents.delete(k);
    }

    /*
    ** Documents (server behaviour §3.2), per database: ids compare case-insensitively and are
    ** kept as written. A document is {id, collection, body (its members, parsed), metadata
    ** (what the writer put in @metadata), changeVector, lastModified, flags}.
    */
    static documentKey(db, id) {
        return lowerInvariant(`${db}/${id}`);
    }

    document(db, id) {
        return this.documents.get(NodeState.documentKey(db, id)) || null;
    }

    /* the next value of a per-database counter (document etags, cluster-wide document writes) */
    nextCount(counter, db) {
        const k = `${counter}:${lowerInvariant(db)}`;
        const n = (this.counters.get(k) || 0) + 1;
        this.counters.set(k, n);
        return n;
    }
}

/*
** Applying one committed command to a state. Deterministic: every node gets the same result
** from the same state. `behavior` is which server generation answers (PR18822, PR21644).
*/
const COMMANDS = {
    /* AddOrUpdateCompareExchangeCommand.ExecuteInternal (ref §2.2, SRV-CMD5/6) */
    put(state, c, raftIndex, behavior) {
        const storageKey = NodeState.storageKey(c.db, c.key);
        const current = state.items.get(storageKey);
        if (current && current.Index !== c.index) {
            return { Index: current.Index, Value: current.Value };   // concurrency violation
        }
        if (!current && c.index !== 0 && behavior.pr18822) return { Index: 0, Value: null };
        state.items.set(storageKey, { Index: raftIndex, Value: c.value, ExpiresAt: c.expiresAt });
        return { Index: raftIndex, Value: c.value };
    },

    /* RemoveCompareExchangeCommand.ExecuteInternal (ref §4, SRV-CMD5/6, PR21644) */
    delete(state, c, raftIndex, behavior) {
        const storageKey = NodeState.storageKey(c.db, c.key);
        const current = state.items.get(storageKey);
        if (!current) return behavior.pr21644 ? { Index: 0, Value: null } : { Index: raftIndex, Value: null };
        if (current.Index !== c.index) return { Index: current.Index, Value: current.Value };
        state.items.delete(storageKey);
        return { Index: raftIndex, Value: current.Value };
    },

    /* DeleteExpiredCompareExchangeCommand: only items still expired by the command's clock */
    expire(state, c) {
        let removed = 0;
        for (const k of c.keys) {
            const item = state.items.get(k);
            if (item && item.ExpiresAt !== null && item.ExpiresAt <= c.now) {
                state.items.delete(k);
                removed += 1;
            }
        }
        return removed;
    },

    /*
    ** Database records. A record's Etag is its topology stamp (ref §6.1, S-TOPO): here the
    ** raft index of its last change plus one, so that the databases made at start-up (which
    ** take no index) begin at 1 and every change is newer than anything before it.
    */
    createDatabase(state, c, raftIndex) {
        state.databases.set(lowerInvariant(c.name), {
            name: c.name, members: c.members.slice(), rehabs: [], etag: raftIndex + 1, ids: c.ids,
        });
        return raftIndex;
    },

    deleteDatabases(state, c, raftIndex) {
        for (const name of c.names) {
            state.databases.delete(lowerInvariant(name));
            state.dropItemsOf(name);
        }
        return raftIndex;
    },

    /* the database group changes (a move, a node put in or out of rehab) */
    topology(state, c, raftIndex) {
        const record = state.database(c.name);
        if (!record) return null;
        record.members = c.members.slice();
        record.rehabs = c.rehabs.slice();
        record.etag = raftIndex + 1;
        return record.etag;
    },

    /* a command that changes nothing: what other databases and the observer keep sending */
    noop() {
        return null;
    },

    /* every record's stamp moves on, nothing else changes (control POST /topology/bump) */
    bump(state, c, raftIndex) {
        for (const record of state.databases.values()) record.etag = raftIndex + 1;
        return raftIndex + 1;
    },
};

/* ------------------------------------------------------------------------------------------
** Cluster-wide transactions and documents (server behaviour §3)
** ---------------------------------------------------------------------------------------- */

const GUARD_PREFIX = 'rvn-atomic/';     // CompareExchangeKey's atomic guards (ref §10, S-CTX)
const RAFT_TAG = 'RAFT';
const TRXN_TAG = 'TRXN';

/* a database's DatabaseTopologyIdBase64 and ClusterTransactionIdBase64: 22 base64 characters */
function databaseIds() {
    const id = () => crypto.randomBytes(16).toString('base64').replace(/=+$/, '');
    return { group: id(), clusterTx: id() };
}

/* ChangeVectorUtils.GetEtagById: the etag of the entry whose id is `id`, 0 when none */
function etagById(changeVector, id) {
    if (typeof changeVector !== 'string') return 0;
    for (const part of changeVector.split(',')) {
        const m = /^\s*([^:]+):(\d+)-(.+?)\s*$/.exec(part);
        if (m && m[3] === id) return Number(m[2]);
    }
    return 0;
}

/* the entries of a change vector other than those with `tag` */
function changeVectorWithout(changeVector, tag) {
    if (typeof changeVector !== 'string' || changeVector === '') return [];
    return changeVector.split(',').map((p) => p.trim()).filter((p) => p && !p.startsWith(`${tag}:`));
}

/* a document as the server writes it: its members, then @metadata */
function documentJson(doc) {
    const metadata = { ...doc.metadata, '@collection': doc.collection, '@change-vector': doc.changeVector,
        '@id': doc.id, '@last-modified': doc.lastModified };
    if (doc.flags) metadata['@flags'] = doc.flags;
    return { ...doc.body, '@metadata': metadata };
}

/* the collection of a document body: @metadata.@collection, else @empty (§3.2) */
function collectionOf(document) {
    const metadata = document && document['@metadata'];
    const name = metadata && typeof metadata === 'object' ? metadata['@collection'] : null;
    return typeof name === 'string' && name !== '' ? name : '@empty';
}

/* a document body without its @metadata, and the @metadata the writer gave (server-set keys out) */
function splitDocument(document) {
    const body = {};
    let metadata = {};
    for (const [k, v] of Object.entries(document)) {
        if (k === '@metadata') metadata = v && typeof v === 'object' && !Array.isArray(v) ? { ...v } : {};
        else body[k] = v;
    }
    for (const k of ['@id', '@change-vector', '@last-modified', '@flags', '@collection']) delete metadata[k];
    return { body, metadata };
}

/*
** ClusterTransactionCommand.ExecuteCompareExchangeCommands (S-CTX): the atomic guards of the
** document commands are added after the explicit compare-exchange commands
** (EnsureAtomicDocumentWrites), every command is validated against the state before the
** transaction, and only when every one passes is any of them executed, all with index
** `raftIndex`. Then the documents are written (the database applies them from the
** transaction; here with the same raft entry). Returns {errors} or {results}.
*/
COMMANDS.clusterTx = function clusterTx(state, c, raftIndex, behavior) {
    const record = state.database(c.db);
    const ids = record && record.ids ? record.ids : { group: 'unknown', clusterTx: 'unknown' };
    const cluster = c.commands.filter((x) => x.Type === 'CompareExchangePUT' || x.Type === 'CompareExchangeDELETE')
        .map((x) => ({ ...x }));
    if (!c.disableAtomic) {
        for (const x of c.commands) {
            if (x.Type !== 'PUT' && x.Type !== 'DELETE') continue;
            const guardKey = GUARD_PREFIX + x.Id;
            const changeVector = x.OriginalChangeVector || x.ChangeVector || null;
            let index = changeVector === null ? 0 : etagById(changeVector, ids.clusterTx);
            const guard = { Id: guardKey, Index: index };
            if (x.Type === 'PUT') {
                guard.Type = 'CompareExchangePUT';
                const value = { Id: x.Id };
                const expires = x.Document && x.Document['@metadata'] && x.Document['@metadata']['@expires'];
                if (typeof expires === 'string') value['@metadata'] = { '@expires': expires };
                guard.Document = value;
            } else {
                if (changeVector === null) {
                    const current = state.get(c.db, guardKey);
                    if (!current) continue;     // deleting a document that has no guard
                    index = current.Index;
                    guard.Index = index;
                }
                guard.Type = 'CompareExchangeDELETE';
            }
            guard.Error = `Guard compare exchange value '${guardKey}' index does not match the transaction `
                + `index's ${index} change vector on ${x.Id}`;
            cluster.push(guard);
        }
    }
    const errors = [];
    for (const x of cluster) {
        const item = state.get(c.db, x.Id);
        const current = item ? item.Index : -1;
        let ok;
        if (x.Type === 'CompareExchangePUT') {
            // a present item whose @expires has passed passes whatever the index (S-CMD Validate)
            ok = item ? (item.ExpiresAt !== null && item.ExpiresAt < c.now) || current === x.Index : x.Index === 0;
        } else {
            ok = item ? current === x.Index : x.Index === 0;
        }
        if (ok) continue;
        let message = `Concurrency check failed for ${x.Type === 'CompareExchangePUT' ? 'putting' : 'deleting'} `
            + `the key '${x.Id}'. Requested index: ${x.Index}, actual index: ${current}`;
        if (x.Error) message = `${x.Error}\n${message}`;
        errors.push({ message, id: x.Id, expected: x.Index, actual: current, type: x.Error ? 'Document' : 'CompareExchange' });
    }
    if (errors.length > 0) return { errors };
    for (const x of cluster) {
        // AddOrUpdate/RemoveCompareExchangeCommand.ExecuteInternal, as a single put or delete
        if (x.Type === 'CompareExchangePUT') {
            const value = new RawJson(JSON.stringify(x.Document));
            const expiresAt = x.Document['@metadata'] && typeof x.Document['@metadata']['@expires'] === 'string'
                ? parseExpires(x.Document['@metadata']['@expires']) : null;
            COMMANDS.put(state, { db: c.db, key: x.Id, index: x.Index, value, expiresAt }, raftIndex, behavior);
        } else {
            COMMANDS.delete(state, { db: c.db, key: x.Id, index: x.Index }, raftIndex, behavior);
        }
    }
    const results = [];
    for (const x of c.commands) {
        if (x.Type !== 'PUT' && x.Type !== 'DELETE') continue;
        const count = state.nextCount('raft', c.db);
        let changeVector = `${RAFT_TAG}:${count}-${ids.group}`;
        if (!c.disableAtomic) changeVector += `,${TRXN_TAG}:${raftIndex}-${ids.clusterTx}`;
        const key = NodeState.documentKey(c.db, x.Id);
        if (x.Type === 'PUT') {
            const { body, metadata } = splitDocument(x.Document);
            const doc = { id: x.Id, collection: collectionOf(x.Document), body, metadata, changeVector,
                lastModified: c.lastModified, flags: 'FromClusterTransaction' };
            state.documents.set(key, doc);
            results.push({ Type: 'PUT', '@id': x.Id, '@collection': doc.collection, '@change-vector': changeVector,
                '@last-modified': c.lastModified, '@flags': 'FromClusterTransaction' });
        } else {
            state.documents.delete(key);
            results.push({ Id: x.Id, Type: 'DELETE', Deleted: true, ChangeVector: changeVector });
        }
    }
    for (const x of c.commands) {
        if (x.Type === 'CompareExchangePUT' || x.Type === 'CompareExchangeDELETE') {
            results.push({ Type: x.Type, Key: x.Id, Index: raftIndex });
        }
    }
    return { results };
};

/*
** Document writes outside a cluster-wide transaction: PUT/DELETE /docs and the single-node
** batch (§3.2). Each command's optimistic concurrency (a change vector: it must be the
** document's; "" : the document must not exist) and, for a document a cluster-wide
** transaction wrote, its atomic guard (DocumentPutAction ValidateAtomicGuard, S-DPUT) are
** checked first; one failure writes nothing. (A real server writes documents without Raft and
** replicates them; here they go through the log, so they take a raft index.)
*/
COMMANDS.documents = function documents(state, c) {
    const record = state.database(c.db);
    const ids = record && record.ids ? record.ids : { group: 'unknown', clusterTx: 'unknown' };
    for (const x of c.commands) {
        const doc = state.document(c.db, x.Id);
        const expected = x.ChangeVector;
        if (expected !== null && expected !== undefined) {
            const actual = doc ? doc.changeVector : null;
            if ((expected === '' && doc) || (expected !== '' && actual !== expected)) {
                return { error: { status: 409, type: 'Raven.Client.Exceptions.ConcurrencyException',
                    message: `Document ${x.Id} has change vector ${actual}, but ${x.Type === 'PUT' ? 'Put' : 'Delete'} `
                        + `was called with ${expected === '' ? 'an empty change vector' : `change vector ${expected}`}. `
                        + 'Optimistic concurrency violation, transaction will be aborted.' } };
            }
        }
        if (x.Type === 'PUT' && doc) {
            const trxn = etagById(doc.changeVector, ids.clusterTx);
            if (trxn > 0) {
                const guard = state.get(c.db, GUARD_PREFIX + x.Id);
                if (!guard || guard.Index !== trxn) {
                    return { error: { status: 409, type: 'Raven.Client.Exceptions.ConcurrencyException',
                        message: `Cannot PUT document '${x.Id}' because its change vector's cluster transaction index `
                            + `is set to ${trxn} but the compare exchange guard ('${GUARD_PREFIX}${x.Id}') is `
                            + `${guard ? `set to ${guard.Index}` : 'missing'}` } };
                }
            }
            const collection = collectionOf(x.Document);
            if (lowerInvariant(collection) !== lowerInvariant(doc.collection)) {
                return { error: { status: 500, type: 'System.InvalidOperationException',
                    message: `Changing '${x.Id}' from '${doc.collection}' to '${collection}' via update is not `
                        + `supported. Delete it and recreate the document '${x.Id}'.` } };
            }
        }
    }
    const results = [];
    for (const x of c.commands) {
        const key = NodeState.documentKey(c.db, x.Id);
        const doc = state.documents.get(key);
        if (x.Type === 'PUT') {
            const etag = state.nextCount('etag', c.db);
            const kept = doc ? changeVectorWithout(doc.changeVector, c.tag) : [];
            const changeVector = [`${c.tag}:${etag}-${ids.group}`, ...kept].join(',');
            const { body, metadata } = splitDocument(x.Document);
            const written = { id: doc ? doc.id : x.Id, collection: collectionOf(x.Document), body, metadata,
                changeVector, lastModified: c.lastModified, flags: null };
            state.documents.set(key, written);
            results.push({ Type: 'PUT', '@id': written.id, '@collection': written.collection,
                '@change-vector': changeVector, '@last-modified': c.lastModified });
        } else {
            state.documents.delete(key);
            results.push({ Id: x.Id, Type: 'DELETE', Deleted: !!doc, ChangeVector: null });
        }
    }
    return { results };
};

/*
** A copy of a record that a node keeps: the records change in place when a command is
** applied, so each state needs its own.
*/
function copyRecord(record) {
    return { ...record, members: record.members.slice(), rehabs: record.rehabs.slice() };
}

/* .NET's TimeSpan.ToString(): hh:mm:ss and fractions when there are any */
function formatTimeSpan(ms) {
    const total = Math.floor(ms / 1000);
    const pad = (n) => String(n).padStart(2, '0');
    const text = `${pad(Math.floor(total / 3600))}:${pad(Math.floor(total / 60) % 60)}:${pad(total % 60)}`;
    const frac = Math.round((ms % 1000) * 10000);
    return frac ? `${text}.${String(frac).padStart(7, '0')}` : text;
}

class Cluster {
    constructor(nodeCount, defaultBehavior, databases, config) {
        this.nodeCount = nodeCount;
        this.defaultBehavior = defaultBehavior;     // what /reset goes back to
        this.defaultConfig = { ...config };
        this.nodes = [];
        for (let i = 0; i < nodeCount; i++) {
            this.nodes.push({
                index: i, tag: NODE_TAGS[i], running: false, generation: 0, lagMs: 0,
                state: new NodeState(), pending: [], timer: null, waiters: [],
            });
        }
        this.leaderWaiters = new Set();
        this.electionTimer = null;
        this.reset(databases);
    }

    /*
    ** Everything back to the start: no commands, node 0 leads (term 1), every node applied
    ** everything, the given databases exist on every node (taking no raft index). Which
    ** nodes run is the listeners' business (Emulator.startNode / stopNode).
    */
    reset(databases) {
        this.raftIndex = 0;
        this.committed = new NodeState();
        this.history = new Map();       // raft request id -> {raftIndex, result}
        this.config = { ...this.defaultConfig };
        this.setBehavior(this.defaultBehavior === 'new', this.defaultBehavior === 'new');
        const all = this.nodes.map((n) => n.index);
        for (const name of databases) {
            this.committed.databases.set(lowerInvariant(name), {
                name, members: all.slice(), rehabs: [], etag: 1, ids: databaseIds(),
            });
        }
        if (this.electionTimer) clearTimeout(this.electionTimer);
        this.electionTimer = null;
        this.electionStarted = null;
        this.leader = 0;
        this.term = 1;
        for (const node of this.nodes) {
            if (node.timer) clearTimeout(node.timer);
            node.timer = null;
            node.pending = [];
            node.lagMs = 0;
            this.releaseWaiters(node);
            node.state = new NodeState();
            for (const [k, record] of this.committed.databases) node.state.databases.set(k, copyRecord(record));
        }
        this.wakeLeaderWaiters();
    }

    /* true = the PR is applied (newer servers); ref §2.2 (PR18822) and §4 (PR21644) */
    setBehavior(pr18822, pr21644) {
        this.behavior = { pr18822: !!pr18822, pr21644: !!pr21644 };
    }

    majority() {
        return Math.floor(this.nodeCount / 2) + 1;
    }

    runningCount() {
        return this.nodes.filter((n) => n.running).length;
    }

    /* a leader that runs, with a majority behind it */
    canCommit() {
        return this.leader !== null && this.nodes[this.leader].running
            && this.runningCount() >= this.majority();
    }

    /* ---- leadership -------------------------------------------------------------------- */

    /*
    ** Called whenever a node stops or starts. A leader that stopped, or that lost its
    ** majority, steps down; without a leader and with a majority running an election starts.
    */
    membershipChanged() {
        if (this.leader !== null && !this.canCommit()) {
            this.leader = null;
            this.electionStarted = null;
        }
        this.maybeElect();
    }

    maybeElect() {
        if (this.leader !== null || this.electionTimer || this.config.electionsFrozen) return;
        if (this.runningCount() < this.majority()) return;
        this.electionStarted = Date.now();
        const done = () => {
            this.electionTimer = null;
            if (this.leader !== null || this.config.electionsFrozen) return;
            if (this.runningCount() < this.majority()) return;      // lost meanwhile
            this.becomeLeader(this.nextLeader());
        };
        if (this.config.electionMs <= 0) done();
        else this.electionTimer = setTimeout(done, this.config.electionMs);
    }

    /* the running node after the previous leader, in node order */
    nextLeader() {
        const start = this.lastLeader === undefined ? 0 : this.lastLeader + 1;
        for (let k = 0; k < this.nodeCount; k++) {
            const node = this.nodes[(start + k) % this.nodeCount];
            if (node.running) return node.index;
        }
        return null;
    }

    /* a new leader has every committed command: it applies what it had not yet */
    becomeLeader(index) {
        if (index === null) return;
        this.leader = index;
        this.lastLeader = index;
        this.term += 1;
        this.electionStarted = null;
        this.applyDue(this.nodes[index], true);
        this.wakeLeaderWaiters();
    }

    /* node `index` leads at once, in term 1 (a reset, the start) */
    installLeader(index) {
        if (this.electionTimer) clearTimeout(this.electionTimer);
        this.electionTimer = null;
        this.leader = null;
        this.lastLeader = undefined;
        this.becomeLeader(index);
        this.term = 1;
    }

    /* the leader steps down and an election follows (control POST /leader) */
    stepDown(next) {
        this.leader = null;
        if (next !== undefined && next !== null) this.lastLeader = next - 1;
        this.maybeElect();
    }

    waitForLeader(ms) {
        return new Promise((resolve) => {
            const entry = { resolve, timer: null };
            entry.timer = setTimeout(() => { this.leaderWaiters.delete(entry); resolve(); }, ms);
            this.leaderWaiters.add(entry);
        });
    }

    wakeLeaderWaiters() {
        for (const entry of this.leaderWaiters) {
            clearTimeout(entry.timer);
            entry.resolve();
        }
        this.leaderWaiters.clear();
    }

    /* ---- the log ----------------------------------------------------------------------- */

    /*
    ** Commits one command (the caller checked canCommit): the next raft index, the result on
    ** the committed state, the history entry, and the command queued on every node.
    */
    commit(raftRequestId, command) {
        this.raftIndex += 1;
        const raftIndex = this.raftIndex;
        const result = COMMANDS[command.type](this.committed, command, raftIndex, this.behavior);
        this.committed.applied = raftIndex;
        const outcome = { raftIndex, result };
        this.history.set(raftRequestId || crypto.randomUUID(), outcome);
        if (this.history.size > HISTORY_LIMIT) {
            this.history.delete(this.history.keys().next().value);   // forget the oldest id
        }
        const entry = { raftIndex, command, behavior: { ...this.behavior }, committedAt: Date.now() };
        for (const node of this.nodes) {
            node.pending.push(entry);
            this.applyDue(node);
        }
        return outcome;
    }

    lagOf(node) {
        return node.index === this.leader ? 0 : node.lagMs;
    }

    /*
    ** Applies the node's queued commands that are due (all of them with `all`), in log order,
    ** and sets a timer for the next one. A stopped node applies nothing.
    */
    applyDue(node, all) {
        if (node.timer) {
            clearTimeout(node.timer);
            node.timer = null;
        }
        if (!node.running) return;
        const now = Date.now();
        const lag = this.lagOf(node);
        let applied = 0;
        while (applied < node.pending.length) {
            const entry = node.pending[applied];
            if (!all && entry.committedAt + lag > now) break;
            COMMANDS[entry.command.type](node.state, entry.command, entry.raftIndex, entry.behavior);
            node.state.applied = entry.raftIndex;
            applied += 1;
        }
        if (applied > 0) {
            node.pending.splice(0, applied);
            node.waiters = node.waiters.filter((w) => {
                if (w.raftIndex > node.state.applied) return true;
                w.resolve(true);
                return false;
            });
        }
        if (node.pending.length > 0) {
            const wait = Math.max(1, node.pending[0].committedAt + lag - now);
            node.timer = setTimeout(() => this.applyDue(node), wait);
        }
    }

    /* resolves true once `node` applied `raftIndex`, false when it stops first */
    waitApplied(node, raftIndex) {
        if (node.state.applied >= raftIndex) return Promise.resolve(true);
        return new Promise((resolve) => node.waiters.push({ raftIndex, resolve }));
    }

    releaseWaiters(node) {
        for (const w of node.waiters) w.resolve(false);
        node.waiters = [];
    }

    setLag(node, ms) {
        node.lagMs = ms;
        this.applyDue(node);
    }

    nodeStarted(node) {
        node.running = true;
        this.applyDue(node);        // catching up, `lag_ms` behind
        this.membershipChanged();
    }

    nodeStopped(node) {
        node.running = false;
        node.generation += 1;
        if (node.timer) clearTimeout(node.timer);
        node.timer = null;
        this.releaseWaiters(node);
        this.membershipChanged();
    }

    /*
    ** SendToLeaderAsync as the receiving node runs it: wait for a leader (up to the operation
    ** timeout, then TimeoutException, 408), have it commit the command unless its request id
    ** was committed already, then wait until this node applied it. Returns the outcome, or
    ** null when the node stopped or the client went away first (nothing left to answer).
    */
    async submit(node, raftRequestId, command, isGone) {
        const generation = node.generation;
        const gone = () => node.generation !== generation || !node.running || isGone();
        const deadline = Date.now() + this.config.operationTimeoutMs;
        for (;;) {
            if (gone()) return null;
            if (this.canCommit()) {
                const outcome = (raftRequestId && this.history.get(raftRequestId))
                    || this.commit(raftRequestId, command);
                if (!await this.waitApplied(node, outcome.raftIndex)) return null;
                return outcome;
            }
            const left = deadline - Date.now();
            if (left <= 0) {
                throw new RavenError(408, 'System.TimeoutException',
                    `Could not send command Raven.Server.ServerWide.Commands.${command.typeName} from ${node.tag} `
                    + 'to leader because there is no leader, and we timed out waiting for one after '
                    + `${formatTimeSpan(this.config.operationTimeoutMs)}`);
            }
            await this.waitForLeader(Math.min(left, 250));      // also notices `gone` soon
        }
    }

    /*
    ** The leader's ClusterObserver deletes expired items in one raft command, and only when
    ** something has expired (ref §5, SRV-OBS, SRV-EXP). Returns how many it removed (0 with
    ** no leader: nothing runs the cleanup then).
    */
    removeExpired(nowMs) {
        if (!this.canCommit()) return 0;
        const keys = [...this.committed.items.entries()]
            .filter(([, item]) => item.ExpiresAt !== null && item.ExpiresAt <= nowMs)
            .map(([k]) => k);
        if (keys.length === 0) return 0;
        return this.commit(null, { type: 'expire', keys, now: nowMs }).result;
    }
}

/* ------------------------------------------------------------------------------------------
** Request helpers
** ---------------------------------------------------------------------------------------- */

function readRawBody(req) {
    return new Promise((resolve, reject) => {
        const chunks = [];
        let size = 0;
        req.on('data', (chunk) => {
            size += chunk.length;
            if (size > MAX_BODY_BYTES) {
                reject(new RavenError(500, 'System.IO.InvalidDataException',
                    `Request body over the emulator's ${MAX_BODY_BYTES} byte limit`));
                req.destroy();
                return;
            }
            chunks.push(chunk);
        });
        req.on('end', () => resolve(Buffer.concat(chunks)));
        req.on('error', reject);
        req.on('close', () => {     // the client went away before the body was complete
            if (!req.complete) reject(new RavenError(500, 'System.IO.IOException', 'The request was aborted'));
        });
    });
}

/* only gzip, br and zstd are decompressed; anything else is read as it is (ref §8.4, SRV-RH) */
function decodeBody(raw, encoding) {
    const enc = (encoding || '').trim().toLowerCase();
    try {
        if (enc === 'gzip') return zlib.gunzipSync(raw);
        if (enc === 'br') return zlib.brotliDecompressSync(raw);
        if (enc === 'zstd' && typeof zlib.zstdDecompressSync === 'function') {
            return zlib.zstdDecompressSync(raw);
        }
    } catch (e) {
        throw new RavenError(500, 'System.IO.InvalidDataException',
            `Could not decompress the ${enc} request body: ${e.message}`);
    }
    return raw;
}

/* the server reads the body with ReadForMemoryAsync: it must be one JSON object (ref §2.1) */
function parseJsonObject(text, what) {
    let parsed;
    try {
        parsed = JSON.parse(text);
    } catch (e) {
        throw new RavenError(500, 'System.IO.InvalidDataException',
            `Failed to parse ${what} as a JSON object: ${e.message}`);
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
        throw new RavenError(500, 'System.IO.InvalidDataException',
            `Expected a JSON object for ${what}, but got ${Array.isArray(parsed) ? 'an array' : typeof parsed}`);
    }
    return parsed;
}

/*
** RequestHandler.GetStringQueryString: absent, empty or blank counts as missing (ref §1).
** A missing required value, and an index that long.TryParse refuses, throw ArgumentException,
** which the exception map does not list (ref §7.2: 400 is only for BadRequestException and
** RouteNotFoundException), so the answer is 500 with the error JSON, not 400.
*/
function queryString(query, name, required) {
    const value = query.get(name);
    if (isNullOrWhiteSpace(value)) {
        if (required) throw ArgumentException(`Query string ${name} is mandatory, but wasn't specified.`);
        return null;
    }
    return value;
}

function queryLong(query, name) {
    const text = queryString(query, name, true);
    const n = parseDotNetInteger(text, 64);
    if (n === null) throw ArgumentException(`Could not parse header '${name}' header as long, value was: ${text}`);
    return Number(n);
}

function queryInt(query, name, fallback) {
    const text = queryString(query, name, false);
    if (text === null) return fallback;
    const n = parseDotNetInteger(text, 32);
    if (n === null) throw ArgumentException(`Could not parse header '${name}' header as int, value was: ${text}`);
    return Number(n);
}

/* GetRaftRequestIdFromQuery: absent or blank -> a fresh id, i.e. never deduplicated (ref §6.4) */
function raftRequestId(query) {
    return queryString(query, 'raft-request-id', false) || crypto.randomUUID();
}

/* GetLongFromHeaders: strips one pair of quotes, null when not a number */
function headerLong(req, name) {
    let raw = req.headers[name.toLowerCase()];
    if (raw === undefined) return null;
    if (raw.length >= 2 && raw[0] === '"') raw = raw.slice(1, -1);
    const n = parseDotNetInteger(raw, 64);
    return n === null ? null : Number(n);
}

function acceptsGzip(req) {
    const header = req.headers['accept-encoding'] || '';
    return header.split(',').some((part) => {
        const [coding, ...params] = part.trim().toLowerCase().split(';');
        const q = params.map((p) => p.trim()).find((p) => p.startsWith('q='));
        if (q && Number(q.slice(2)) === 0) return false;
        return coding === 'gzip' || coding === '*';
    });
}

/* the request log shows bodies decompressed when that works, cut to LOGGED_BODY_CHARS */
function loggedBody(raw, encoding) {
    let text;
    try {
        text = decodeBody(raw, encoding).toString('utf8');
    } catch (e) {
        text = raw.toString('utf8');
    }
    return text.slice(0, LOGGED_BODY_CHARS);
}

function json(status, value, headers) {
    return { status, headers: headers || {}, body: toJson(value) };
}

/* ------------------------------------------------------------------------------------------
** The server: routes of one node
** ---------------------------------------------------------------------------------------- */

/* the connection a request came on (an HTTP/2 stream's is its session's socket) */
function connectionOf(req) {
    return req.stream && req.stream.session ? req.stream.session.socket : req.socket;
}

function isGone(req) {
    const conn = connectionOf(req);
    return !conn || conn.destroyed;
}

class Emulator {
    constructor(opts) {
        this.opts = opts;
        this.cluster = new Cluster(opts.ports.length, opts.behavior, opts.databases,
            { electionMs: opts.electionMs, operationTimeoutMs: opts.operationTimeoutMs, electionsFrozen: false });
        this.scheme = opts.tlsDir ? 'https' : 'http';
        this.nodes = opts.ports.map((port, i) => ({
            index: i, tag: NODE_TAGS[i], port, server: null, sockets: new Set(), running: false,
        }));
        this.faults = [];
        this.requests = [];
        this.unknownRoutes = [];
        this.wire = { chunked: true };
        this.tls = opts.tlsDir ? this.loadTls(opts.tlsDir) : null;
    }

    loadTls(dir) {
        const read = (name) => fs.readFileSync(path.join(dir, name));
        return { key: read('server.key'), cert: read('server.crt'), ca: read('ca.crt') };
    }

    nodeUrl(node) {
        return `${this.scheme}://${HOST}:${node.port}`;
    }

    clusterNode(node) {
        return this.cluster.nodes[node.index];
    }

    /* ---- node listeners ---------------------------------------------------------------- */

    /*
    ** TLS: the node asks for a client certificate but lets the handshake finish without a
    ** valid one (rejectUnauthorized: false), then answers 403 InvalidAuth as RavenDB does
    ** (ref §7.1, §8.1, SRV-ROUTER): its Kestrel accepts any certificate at the TLS layer and
    ** the router decides. A certificate that the CA did not sign is "unknown to the server".
    ** Kestrel speaks HTTP/1.1 and HTTP/2 (Http.Protocols Http1AndHttp2, S-HCFG), HTTP/2 being
    ** chosen by ALPN: so does a TLS node here, unless --no-http2.
    */
    createServer(node) {
        const handler = (req, res) => this.handleNodeRequest(node, req, res).catch((e) => {
            process.stderr.write(`emulator: ${req.method} ${req.url}: ${e.stack || e}\n`);
            const conn = connectionOf(req);
            if (conn) conn.destroy();
        });
        const tlsOptions = { ...this.tls, requestCert: true, rejectUnauthorized: false };
        let server;
        if (!this.tls) server = http.createServer(handler);
        else if (this.opts.http2) server = http2.createSecureServer({ ...tlsOptions, allowHTTP1: true }, handler);
        else server = require('https').createServer(tlsOptions, handler);
        server.on('connection', (socket) => {
            node.sockets.add(socket);
            socket.on('close', () => node.sockets.delete(socket));
        });
        // a node that dies right after a handshake: the connection goes before any request
        server.on('secureConnection', (socket) => {
            if (this.takeConnectionFault(node)) socket.destroy();
        });
        server.on('clientError', (err, socket) => socket.destroy());
        server.on('sessionError', () => {});
        return server;
    }

    startNode(node) {
        if (node.running) return Promise.resolve();
        return new Promise((resolve, reject) => {
            const server = this.createServer(node);
            server.once('error', reject);
            server.listen(node.port, HOST, () => {
                server.removeListener('error', reject);
                node.port = server.address().port;      // a requested port 0 becomes a real one
                node.server = server;
                node.running = true;
                this.cluster.nodeStarted(this.clusterNode(node));
                resolve();
            });
        });
    }

    /* closes the listener and resets its open connections: clients see refused / reset */
    stopNode(node) {
        if (!node.running) return Promise.resolve();
        node.running = false;
        this.cluster.nodeStopped(this.clusterNode(node));
        const server = node.server;
        node.server = null;
        return new Promise((resolve) => {
            server.close(() => resolve());
            for (const socket of node.sockets) socket.destroy();
            node.sockets.clear();
        });
    }

    /* ---- one request ------------------------------------------------------------------- */

    async handleNodeRequest(node, req, res) {
        const entry = this.logRequest(node, req);
        let raw;
        try {
            raw = await readRawBody(req);
        } catch (e) {
            if (isGone(req) || !(e instanceof RavenError)) {
                entry.status = 'aborted';       // the client hung up mid-body: nothing to answer
                this.drop(req, entry);
                return;
            }
            this.send(req, res, errorResponse(req.url, e), entry);
            return;
        }
        entry.body = loggedBody(raw, req.headers['content-encoding']);

        const denied = this.checkClientCertificate(req);
        if (denied) {
            this.send(req, res, denied, entry);
            return;
        }

        const fault = this.takeFault(node, req);
        if (fault) {
            entry.fault = fault.action;
            if (fault.action === 'drop_before_apply') {
                this.drop(req, entry);
                return;
            }
            if (fault.action === 'delay') {
                await new Promise((r) => setTimeout(r, fault.delay_ms || 0));
                // the node stopped (or the client gave up) meanwhile: nothing is applied
                if (isGone(req) || !node.running) {
                    entry.status = 'dropped';
                    return;
                }
            }
            if (fault.action === 'status') {
                this.send(req, res, this.faultResponse(req, fault), entry);
                return;
            }
        }

        const response = await this.route(node, req, raw);
        if (response === null || isGone(req)) {     // the node stopped, or the client left
            entry.status = 'dropped';
            return;
        }
        if (fault && fault.action === 'drop_after_apply') {
            this.drop(req, entry);
            return;
        }
        if (fault && fault.action === 'malformed') {
            response.status = 200;
            response.body = fault.body !== undefined && fault.body !== null ? String(fault.body) : '{"Index": ';
        }
        this.send(req, res, response, entry);
    }

    checkClientCertificate(req) {
        const conn = connectionOf(req);
        if (!this.tls || conn.authorized) return null;
        const cert = conn.getPeerCertificate();
        let message;
        if (!cert || Object.keys(cert).length === 0) {
            message = 'This server requires client certificate for authentication, but none was provided by the client.';
        } else {
            const subject = cert.subject ? Object.entries(cert.subject).map(([k, v]) => `${k}=${v}`).join(', ') : '';
            const thumbprint = (cert.fingerprint || '').replace(/:/g, '');
            message = `The supplied client certificate '${subject}(Thumbprint: ${thumbprint})' is unknown to the server. `
                + 'In order to register your certificate please contact your system administrator.';
        }
        return json(403, { Type: 'InvalidAuth', Message: message });
    }

    /* the connection goes: no answer (a node dying, a network cut) */
    drop(req, entry) {
        entry.status = 'dropped';
        const conn = connectionOf(req);
        if (conn) conn.destroy();
    }

    /*
    ** The answer as Kestrel writes it: JSON with its content type and Raven-Server-Version;
    ** gzip when asked (ref §8.4); on HTTP/1.1 a body streamed without Content-Length, i.e.
    ** chunked (AsyncBlittableJsonTextWriter; server behaviour §1 #7) unless the control API
    ** turned that off; HTTP/2 has frames instead.
    */
    send(req, res, response, entry) {
        const headers = {
            'Content-Type': JSON_TYPE,
            'Raven-Server-Version': SERVER_VERSION,
            ...response.headers,
        };
        let body = response.body === null || response.body === undefined
            ? Buffer.alloc(0) : Buffer.from(response.body, 'utf8');
        let chunked = false;
        if (response.status === 204) {
            delete headers['Content-Type'];     // NoContentStatus() drops it
            body = Buffer.alloc(0);
        } else {
            if (body.length > 0 && acceptsGzip(req)) {      // ref §8.4: response compression
                body = zlib.gzipSync(body);
                headers['Content-Encoding'] = 'gzip';
                headers.Vary = 'Accept-Encoding';
            }
            chunked = this.wire.chunked && body.length > 0 && req.httpVersionMajor === 1;
            if (!chunked) headers['Content-Length'] = body.length;
        }
        entry.status = response.status;
        if (this.opts.verbose) process.stderr.write(`${entry.node} ${req.method} ${req.url} -> ${response.status}\n`);
        if (isGone(req) || res.destroyed || (res.stream && res.stream.destroyed)) return;
        res.writeHead(response.status, headers);
        if (chunked) {
            res.write(body);        // written before end: no Content-Length, chunked
            res.end();
        } else {
            res.end(body);
        }
    }

    /*
    ** Routing as RequestRouter does it: an unknown path or method is a RouteNotFoundException,
    ** i.e. 400 with the usual error JSON (ref §7.1/§7.2; the 6.x router throws it rather than
    ** writing the older {"Type":"Error"} body). Resolves to null when there is no one left to
    ** answer (the node stopped while the request waited).
    */
    async route(node, req, raw) {
        const url = new URL(req.url, 'http://emulator');
        const segments = url.pathname.split('/').filter(Boolean).map((s) => {
            try { return decodeURIComponent(s); } catch (e) { return s; }
        });
        const ctx = { node, cnode: this.clusterNode(node), req, url, query: url.searchParams, raw };
        try {
            const response = await this.dispatch(ctx, segments);
            if (response !== undefined) return response;
            return this.routeNotFound(node, req);
        } catch (e) {
            if (e instanceof RavenError) return errorResponse(req.url, e);
            process.stderr.write(`emulator: ${req.method} ${req.url}: ${e.stack}\n`);
            return errorResponse(req.url, new RavenError(500, 'System.InvalidOperationException', e.message));
        }
    }

    dispatch(ctx, segments) {
        const method = ctx.req.method;
        const p = segments.join('/');
        if (p === 'topology' && method === 'GET') return this.getTopology(ctx);
        if (p === 'cluster/topology' && method === 'GET') return this.getClusterTopology(ctx);
        if (p === 'cluster/node-info' && method === 'GET') return this.getNodeInfo(ctx);
        if (p === 'build/version' && method === 'GET') return this.getBuildVersion();
        if (p === 'admin/databases' && method === 'PUT') return this.createDatabase(ctx);
        if (p === 'admin/databases' && method === 'DELETE') return this.deleteDatabases(ctx);
        if (segments[0] === 'databases' && segments.length >= 3) {
            return this.databaseRoute(ctx, segments[1], segments.slice(2).join('/'));
        }
        return undefined;
    }

    routeNotFound(node, req) {
        const { pathname, search } = new URL(req.url, 'http://emulator');
        const message = `There is no handler for path: ${req.method} ${pathname}${search}`;
        this.unknownRoutes.push({ node: node.index, method: req.method, url: req.url });
        if (this.unknownRoutes.length > UNKNOWN_ROUTE_LIMIT) this.unknownRoutes.shift();
        process.stderr.write(`emulator: unknown route ${req.method} ${req.url}\n`);
        return errorResponse(req.url, new RavenError(400, 'Raven.Client.Exceptions.Routing.RouteNotFoundException', message));
    }

    /* a raft command from this request: null when the node stopped or the client left */
    submit(ctx, raftRequestId, command) {
        return this.cluster.submit(ctx.cnode, raftRequestId, command, () => isGone(ctx.req));
    }

    /* ---- /databases/{db}/... ----------------------------------------------------------- */

    /*
    ** Database routes, judged by this node's copy of the database record. A database that
    ** does not exist makes the router throw DatabaseDoesNotExistException, which the status
    ** map does not list, so 500 (ref §7.2; RouteInformation.CreateDatabase); no
    ** Database-Missing header on this path (only /topology sets it). A database that exists
    ** but is not on this node is DatabaseNotRelevantException: 410 with
    ** `Cache-Control: must-revalidate, no-cache` and no Refresh-Topology, which only the
    ** database's own handler would set (server behaviour §1 #1, S-START, S-ROUTE).
    */
    async databaseRoute(ctx, db, rest) {
        const method = ctx.req.method;
        const known = (rest === 'cmpxchg' && ['GET', 'PUT', 'DELETE'].includes(method))
            || (rest === 'docs' && ['GET', 'PUT', 'DELETE'].includes(method))
            || (rest === 'bulk_docs' && method === 'POST')
            || (rest === 'queries' && method === 'POST')
            || (rest === 'healthcheck' && method === 'GET')
            || (rest === 'configuration/client' && method === 'GET');
        if (!known) return undefined;
        const record = ctx.cnode.state.database(db);
        if (!record) {
            throw new RavenError(500, 'Raven.Client.Exceptions.Database.DatabaseDoesNotExistException',
                `Database '${db}' does not exist.`);
        }
        if (!record.members.includes(ctx.node.index) && !record.rehabs.includes(ctx.node.index)) {
            throw new RavenError(410, 'Raven.Client.Exceptions.Database.DatabaseNotRelevantException',
                `Database '${record.name}' is not relevant for node ${ctx.node.tag}: it is not in its database group`,
                { 'Cache-Control': 'must-revalidate, no-cache' });
        }
        const headers = this.topologyHeaders(ctx.req, record);
        let response;
        try {
            response = await this.databaseHandler(ctx, record.name, rest);
        } catch (e) {
            if (!(e instanceof RavenError)) throw e;
            response = errorResponse(ctx.req.url, e);
        }
        if (response === null) return null;
        response.headers = { ...headers, ...response.headers };
        return response;
    }

    databaseHandler(ctx, db, rest) {
        if (rest === 'healthcheck') return { status: 204, headers: {}, body: null };
        if (rest === 'configuration/client') return json(200, { Etag: 0, Configuration: null });
        if (rest === 'bulk_docs') return this.bulkDocs(ctx, db);
        if (rest === 'queries') return this.query(ctx, db);
        if (rest === 'docs') {
            switch (ctx.req.method) {
            case 'GET': return this.getDocuments(ctx, db);
            case 'PUT': return this.putDocument(ctx, db);
            default: return this.deleteDocument(ctx, db);
            }
        }
        switch (ctx.req.method) {
        case 'GET': return this.getCompareExchange(ctx, db);
        case 'PUT': return this.putCompareExchange(ctx, db);
        default: return this.deleteCompareExchange(ctx, db);
        }
    }

    /*
    ** DatabaseRequestHandler: Refresh-Topology when this node's record is newer than the
    ** client's Topology-Etag (ref §6.3, SRV-DRH `HasTopologyChanged`: stamp index > etag)
    */
    topologyHeaders(req, record) {
        const etag = headerLong(req, 'Topology-Etag');
        if (etag !== null && record.etag > etag) return { 'Refresh-Topology': 'true' };
        return {};
    }

    /* GET /databases/{db}/cmpxchg (ref §3): this node's own state, however far behind */
    getCompareExchange(ctx, db) {
        const state = ctx.cnode.state;
        const keys = ctx.query.getAll('key');
        if (keys.length > 0) return this.getByKeys(state, db, keys);
        const start = queryInt(ctx.query, 'start', 0);
        const pageSize = queryInt(ctx.query, 'pageSize', 2147483647);
        const startsWith = queryString(ctx.query, 'startsWith', false);
        return json(200, { Results: state.list(db, startsWith, start, pageSize) });
    }

    /* one missing key -> 404 with no body; several -> Index -1, Value null (ref §3.3) */
    getByKeys(state, db, keys) {
        const results = [];
        for (const key of keys) {
            const item = state.get(db, key);
            if (!item && keys.length === 1) return { status: 404, headers: {}, body: null };
            results.push(item
                ? { Key: key, Value: item.Value, Index: item.Index }
                : { Key: key, Value: null, Index: -1 });
        }
        return json(200, { Results: results });
    }

    /*
    ** PUT /databases/{db}/cmpxchg?key=&index=&raft-request-id= (ref §2). The checks run in
    ** the server's order: key, raft id, index, body, then the command constructor (index >= 0,
    ** key size, @expires) -- all before the command reaches raft, so they use up no index.
    ** Keys starting with rvn-atomic/ are accepted: only the session API refuses them (ref §10).
    */
    async putCompareExchange(ctx, db) {
        const key = queryString(ctx.query, 'key', true);
        const raftId = raftRequestId(ctx.query);
        const index = queryLong(ctx.query, 'index');
        const text = decodeBody(ctx.raw, ctx.req.headers['content-encoding']).toString('utf8').replace(/^\uFEFF/, '');
        const body = parseJsonObject(text, 'the compare exchange value');
        if (index < 0) throw new RavenError(500, 'System.IO.InvalidDataException', 'Index must be a non-negative number');
        checkKeySize(key);
        const expiresAt = expiresOf(body, key, db);
        const value = new RawJson(compactJson(text.trim()));
        const outcome = await this.submit(ctx, raftId, {
            type: 'put', typeName: 'AddOrUpdateCompareExchangeCommand', db, key, index, value, expiresAt,
        });
        if (outcome === null) return null;
        const { raftIndex, result } = outcome;
        return json(200, { Index: result.Index, Value: result.Value, Successful: result.Index === raftIndex });
    }

    /* DELETE /databases/{db}/cmpxchg?key=&index=&raft-request-id= (ref §4) */
    async deleteCompareExchange(ctx, db) {
        const key = queryString(ctx.query, 'key', true);
        const raftId = raftRequestId(ctx.query);
        const index = queryLong(ctx.query, 'index');
        if (index < 0) throw new RavenError(500, 'System.IO.InvalidDataException', 'Index must be a non-negative number');
        const outcome = await this.submit(ctx, raftId, {
            type: 'delete', typeName: 'RemoveCompareExchangeCommand', db, key, index,
        });
        if (outcome === null) return null;
        const { raftIndex, result } = outcome;
        return json(200, { Index: result.Index, Value: result.Value, Successful: result.Index === raftIndex });
    }

    /* ---- documents, cluster-wide transactions, queries (server behaviour §3) ------------ */

    /* a request the emulator does not implement: 500, logged with the unknown routes */
    unsupported(ctx, what) {
        this.unknownRoutes.push({ node: ctx.node.index, method: ctx.req.method, url: ctx.req.url, unsupported: what });
        if (this.unknownRoutes.length > UNKNOWN_ROUTE_LIMIT) this.unknownRoutes.shift();
        process.stderr.write(`emulator: unsupported ${what}: ${ctx.req.method} ${ctx.req.url}\n`);
        return new RavenError(500, 'System.NotSupportedException', `The RavenDB emulator does not implement ${what}`);
    }

    bodyObject(ctx, what) {
        const text = decodeBody(ctx.raw, ctx.req.headers['content-encoding']).toString('utf8').replace(/^\uFEFF/, '');
        return parseJsonObject(text, what);
    }

    /*
    ** POST /databases/{db}/bulk_docs (§3.1). The parser reads Commands, then the property right
    ** after the array for TransactionMode (S-PARSE): only there does "ClusterWide" count.
    */
    async bulkDocs(ctx, db) {
        const body = this.bodyObject(ctx, 'the batch');
        if (!Array.isArray(body.Commands)) throw ArgumentException("The batch must have a 'Commands' array");
        const keys = Object.keys(body);
        const after = keys[keys.indexOf('Commands') + 1];
        const clusterWide = after === 'TransactionMode' && body.TransactionMode === 'ClusterWide';
        const commands = body.Commands.map((x, i) => {
            if (x === null || typeof x !== 'object' || Array.isArray(x)) {
                throw new RavenError(500, 'System.IO.InvalidDataException', `Command #${i} is not a JSON object`);
            }
            return x;
        });
        return clusterWide ? this.clusterTransaction(ctx, db, commands) : this.singleNodeBatch(ctx, db, commands);
    }

    /*
    ** A cluster-wide transaction: the checks before Raft (S-CTX ValidateCommands,
    ** ClusterCommandValidation; the command constructors), one raft command, then 201 with the
    ** results and TransactionIndex, or 409 ClusterTransactionConcurrencyException (S-CTXP).
    */
    async clusterTransaction(ctx, db, commands) {
        const flag = ctx.query.get('disableAtomicDocumentWrites');
        let disableAtomic = flag !== null && flag.toLowerCase() === 'true';
        // CheckBackwardCompatibility: no Raven-Client-Version, or one before 5.2, turns the guards off
        const version = /^(\d+)\.(\d+)/.exec(ctx.req.headers['raven-client-version'] || '');
        if (!version || Number(version[1]) < 5 || (Number(version[1]) === 5 && Number(version[2]) < 2)) {
            disableAtomic = true;
        }
        const now = Date.now();
        for (const x of commands) {
            if (!['PUT', 'DELETE', 'CompareExchangePUT', 'CompareExchangeDELETE'].includes(x.Type)) {
                throw new RavenError(500, 'System.ArgumentOutOfRangeException',
                    `The command type ${x.Type} is not supported in cluster transaction.`);
            }
            if (x.Type === 'PUT') {
                if (x.Document === null || typeof x.Document !== 'object' || Array.isArray(x.Document)) {
                    throw new RavenError(500, 'System.IO.InvalidDataException', `The PUT of ${x.Id} has no document`);
                }
                const metadata = x.Document['@metadata'] || {};
                for (const [field, what] of [['@attachments', 'attachments'], ['@counters', 'counters'],
                    ['@timeseries', 'time series']]) {
                    if (metadata[field] !== undefined) {
                        throw new RavenError(500, 'System.NotSupportedException',
                            `The document ${x.Id} has ${what}, this is not supported in cluster wide transaction.`);
                    }
                }
            }
        }
        for (const x of commands) {
            if (typeof x.Id !== 'string' || isNullOrWhiteSpace(x.Id)) {
                throw new RavenError(500, 'Raven.Server.Rachis.RachisApplyException',
                    'In ClusterTransactionDataCommand document id cannot be null, empty or white spaces as part of '
                    + `cluster transaction. Type:(${x.Type}), Index:(${x.Index || 0})`);
            }
            const last = x.Id[x.Id.length - 1];
            if (last === '/' || last === '|') {
                throw new RavenError(500, 'Raven.Server.Rachis.RachisApplyException',
                    `Document id ${x.Id} cannot end with '|' or '/' as part of cluster transaction`);
            }
            if (x.Type === 'CompareExchangePUT' || x.Type === 'CompareExchangeDELETE') {
                if (!disableAtomic && lowerInvariant(x.Id).startsWith(GUARD_PREFIX)) {
                    throw new RavenError(500, 'Raven.Client.Exceptions.CompareExchangeInvalidKeyException',
                        `You cannot manipulate the atomic guard '${x.Id}' via the cluster-wide session`);
                }
                if (!Number.isInteger(x.Index) || x.Index < 0) {
                    throw new RavenError(500, 'System.IO.InvalidDataException', `Index of '${x.Id}' must be a non-negative number`);
                }
                if (x.Type === 'CompareExchangePUT') {
                    checkKeySize(x.Id);
                    if (x.Document === null || typeof x.Document !== 'object' || Array.isArray(x.Document)) {
                        throw new RavenError(500, 'System.IO.InvalidDataException', `The value of '${x.Id}' is not a JSON object`);
                    }
                    expiresOf(x.Document, x.Id, db);
                }
            }
        }
        const outcome = await this.submit(ctx, raftRequestId(ctx.query), {
            type: 'clusterTx', typeName: 'ClusterTransactionCommand', db, commands, disableAtomic, now,
            lastModified: new Date(now).toISOString().replace(/Z$/, '0000Z'),
        });
        if (outcome === null) return null;
        const { raftIndex, result } = outcome;
        if (result.errors) {
            throw new RavenError(409, 'Raven.Client.Exceptions.ClusterTransactionConcurrencyException',
                'Failed to execute cluster transaction due to the following issues: '
                + result.errors.map((e) => e.message).join('\n'));
        }
        return json(201, { Results: result.results, TransactionIndex: raftIndex });
    }

    /* the single-node batch: documents only here (PUT and DELETE) */
    async singleNodeBatch(ctx, db, commands) {
        for (const x of commands) {
            if (x.Type !== 'PUT' && x.Type !== 'DELETE') throw this.unsupported(ctx, `batch command ${x.Type}`);
            if (typeof x.Id !== 'string' || isNullOrWhiteSpace(x.Id)) throw ArgumentException('Document id is missing');
            if (/[/|]$/.test(x.Id)) throw this.unsupported(ctx, 'server-generated document ids');
            if (x.Type === 'PUT' && (x.Document === null || typeof x.Document !== 'object' || Array.isArray(x.Document))) {
                throw new RavenError(500, 'System.IO.InvalidDataException', `The PUT of ${x.Id} has no document`);
            }
        }
        const result = await this.documentCommand(ctx, db, commands.map((x) => ({
            Type: x.Type, Id: x.Id, Document: x.Document, ChangeVector: x.ChangeVector === undefined ? null : x.ChangeVector,
        })));
        if (result === null) return null;
        return json(201, { Results: result.results });
    }

    /* commits a `documents` command; throws its error */
    async documentCommand(ctx, db, commands) {
        const now = Date.now();
        const outcome = await this.submit(ctx, raftRequestId(ctx.query), {
            type: 'documents', typeName: 'BatchCommand', db, commands, tag: ctx.node.tag,
            lastModified: new Date(now).toISOString().replace(/Z$/, '0000Z'),
        });
        if (outcome === null) return null;
        const { error } = outcome.result;
        if (error) throw new RavenError(error.status, error.type, error.message);
        return outcome.result;
    }

    /* If-Match: "<change vector>" (GetStringFromHeaders strips one pair of quotes) */
    static ifMatch(req) {
        let raw = req.headers['if-match'];
        if (raw === undefined) return null;
        if (raw.length >= 2 && raw[0] === '"' && raw[raw.length - 1] === '"') raw = raw.slice(1, -1);
        return raw;
    }

    static documentId(ctx) {
        const ids = ctx.query.getAll('id');
        if (ids.length !== 1 || isNullOrWhiteSpace(ids[0])) {
            throw ArgumentException("Query string value 'id' must appear exactly once and have a non empty value");
        }
        return ids[0];
    }

    /* GET /databases/{db}/docs?id=..[&id=..] (§3.2): this node's documents */
    getDocuments(ctx, db) {
        const ids = ctx.query.getAll('id');
        if (ids.length === 0) throw this.unsupported(ctx, 'listing documents (GET /docs without id)');
        const state = ctx.cnode.state;
        const results = ids.map((id) => state.document(db, id));
        if (ids.length === 1 && results[0] === null) return { status: 404, headers: {}, body: null };
        const etag = crypto.createHash('sha1').update(results.map((d) => (d ? d.changeVector : '-')).join('|'))
            .digest('hex');
        return json(200, { Results: results.map((d) => (d ? documentJson(d) : null)), Includes: {} },
            { ETag: `"${etag}"` });
    }

    /* PUT /databases/{db}/docs?id= (§3.2): 201 {Id, ChangeVector} */
    async putDocument(ctx, db) {
        const id = Emulator.documentId(ctx);
        if (/[/|]$/.test(id)) throw this.unsupported(ctx, 'server-generated document ids');
        const document = this.bodyObject(ctx, 'the document');
        const result = await this.documentCommand(ctx, db,
            [{ Type: 'PUT', Id: id, Document: document, ChangeVector: Emulator.ifMatch(ctx.req) }]);
        if (result === null) return null;
        return json(201, { Id: result.results[0]['@id'], ChangeVector: result.results[0]['@change-vector'] });
    }

    /* DELETE /databases/{db}/docs?id= (§3.2): 204, a missing document too */
    async deleteDocument(ctx, db) {
        const id = Emulator.documentId(ctx);
        const result = await this.documentCommand(ctx, db,
            [{ Type: 'DELETE', Id: id, ChangeVector: Emulator.ifMatch(ctx.req) }]);
        if (result === null) return null;
        return { status: 204, headers: {}, body: null };
    }

    /*
    ** POST /databases/{db}/queries (§3.2): the subset `from <Collection>` with an optional
    ** `where id() == <value>`, the value a string literal, a $parameter or cmpxchg(<one of
    ** those>). cmpxchg() is evaluated once, on this node's state (S-QB EvaluateMethod): the
    ** item's Object as text; a missing item or Object is null, which matches nothing.
    */
    query(ctx, db) {
        const body = this.bodyObject(ctx, 'the query');
        const rql = typeof body.Query === 'string' ? body.Query : '';
        const params = body.QueryParameters && typeof body.QueryParameters === 'object' ? body.QueryParameters : {};
        const invalid = (message) => new RavenError(500, 'Raven.Client.Exceptions.InvalidQueryException',
            `${message}${os.EOL}Query: ${rql}${os.EOL}Parameters: ${JSON.stringify(params)}`);
        const name = String.raw`(?:[A-Za-z_@][\w@]*|'[^']*'|"[^"]*")`;
        const value = String.raw`(?:\$\w+|'[^']*'|"[^"]*")`;
        const m = new RegExp(String.raw`^\s*from\s+(${name})\s*(?:where\s+(.*?))?\s*$`, 'is').exec(rql);
        if (!m) throw this.unsupported(ctx, `the query '${rql}' (only: from <Collection> [where id() == ...])`);
        const collection = m[1].replace(/^['"]|['"]$/g, '');
        let wanted;         // undefined: every document of the collection; null: none
        if (m[2] !== undefined) {
            const where = m[2].trim();
            if (new RegExp(String.raw`^cmpxchg\(\s*${value}\s*\)$`, 'i').test(where)) {
                throw invalid("A 'where' clause cannot contain just an 'cmpxchg' method");
            }
            const w = new RegExp(String.raw`^id\(\)\s*==\s*(?:(cmpxchg)\(\s*(${value})\s*\)|(${value}))$`, 'i').exec(where);
            if (!w) throw this.unsupported(ctx, `the query '${rql}' (only: from <Collection> [where id() == ...])`);
            const literal = (text) => {
                if (text[0] !== '$') return text.slice(1, -1);
                const p = text.slice(1);
                if (!Object.prototype.hasOwnProperty.call(params, p)) throw invalid(`Value of parameter '${p}' was not provided`);
                return params[p];
            };
            if (w[1]) {
                const key = literal(w[2]);
                if (typeof key !== 'string') throw invalid(`Expected value of type string, but got: ${JSON.stringify(key)}`);
                const item = ctx.cnode.state.get(db, key);
                const object = item ? JSON.parse(item.Value.text).Object : undefined;
                if (object === undefined || object === null) wanted = null;
                else wanted = typeof object === 'string' ? object : JSON.stringify(object);
            } else {
                const v = literal(w[3]);
                wanted = v === null || v === undefined ? null : String(v);
            }
        }
        const results = [];
        const prefix = lowerInvariant(`${db}/`);
        for (const [k, doc] of ctx.cnode.state.documents) {
            if (!k.startsWith(prefix)) continue;
            if (collection !== '@all_docs' && lowerInvariant(doc.collection) !== lowerInvariant(collection)) continue;
            if (wanted === null) continue;
            if (wanted !== undefined && lowerInvariant(doc.id) !== lowerInvariant(wanted)) continue;
            results.push(documentJson(doc));
        }
        const stamp = new Date().toISOString().replace(/Z$/, '0000Z');
        return json(200, {
            TotalResults: results.length, SkippedResults: 0, DurationInMs: 0, IncludedPaths: null,
            IndexName: `collection/${collection}`, Results: results, Includes: {}, IndexTimestamp: stamp,
            LastQueryTime: stamp, IsStale: false, ResultEtag: ctx.cnode.state.applied, NodeTag: ctx.node.tag,
        });
    }

    /* ---- topology and cluster ---------------------------------------------------------- */

    /*
    ** GET /topology?name=db (ref §6.1, S-TOPO), from this node's copy of the record (a
    ** lagging node serves an older topology): the members, then the nodes in rehab, each
    ** with its ServerRole, running or not, and the record's stamp as Etag. Any node of the
    ** cluster answers, whether or not it hosts the database. A database this node does not
    ** know: 503 with `Database-Missing: <name as asked>`.
    */
    getTopology(ctx) {
        const name = ctx.query.getAll('name');
        if (name.length === 0 || isNullOrWhiteSpace(name[0])) throw ArgumentException("Query string value 'name' must have a non empty value");
        if (name.length > 1) throw ArgumentException("Query string value 'name' must appear exactly once");
        const db = name[0];
        const record = ctx.cnode.state.database(db);
        if (!record) {
            return json(503, { Type: 'Error', Message: `Database ${db} wasn't found` },
                { 'Database-Missing': db });
        }
        const entry = (index, role) => ({
            Url: this.nodeUrl(this.nodes[index]),
            ClusterTag: this.nodes[index].tag,
            ServerRole: role,
            Database: record.name,
            ServerVersion: SERVER_VERSION,
        });
        const nodes = record.members.map((i) => entry(i, 'Member'))
            .concat(record.rehabs.map((i) => entry(i, 'Rehab')));
        return json(200, { Promotables: [], Nodes: nodes, Etag: record.etag });
    }

    /* GET /cluster/topology: what the ClusterRequestExecutor of server operations reads */
    getClusterTopology(ctx) {
        const members = {};
        for (const node of this.nodes) members[node.tag] = this.nodeUrl(node);
        const status = {};
        for (const node of this.nodes) {
            if (node !== ctx.node) status[node.tag] = { Name: node.tag, Connected: node.running, ErrorDetails: null };
        }
        const leader = this.cluster.leader;
        return json(200, {
            Topology: {
                TopologyId: 'cmpxchg-emulator',
                AllNodes: members,
                Members: members,
                Promotables: {},
                Watchers: {},
                LastNodeId: this.nodes[this.nodes.length - 1].tag,
                Etag: this.cluster.raftIndex,
            },
            Etag: this.cluster.raftIndex,
            Leader: leader === null ? null : this.nodes[leader].tag,
            LeaderShipDuration: 0,
            CurrentState: this.currentState(ctx.node),
            NodeTag: ctx.node.tag,
            CurrentTerm: this.cluster.term,
            NodeLicenseDetails: {},
            LastStateChangeReason: 'emulated cluster',
            Status: status,
        });
    }

    currentState(node) {
        if (this.cluster.leader === node.index) return 'Leader';
        return this.cluster.leader === null ? 'Candidate' : 'Follower';
    }

    getNodeInfo(ctx) {
        return json(200, {
            NodeTag: ctx.node.tag,
            TopologyId: 'cmpxchg-emulator',
            Certificate: null,
            NumberOfCores: 1,
            ServerRole: 'Member',
            HasFixedPort: true,
            ServerSchemaVersion: 60000,
            CurrentState: this.currentState(ctx.node),
        });
    }

    getBuildVersion() {
        return json(200, {
            BuildVersion: 60105, ProductVersion: '6.0', CommitHash: 'emulator', FullVersion: SERVER_VERSION,
        });
    }

    /*
    ** PUT /admin/databases?name=db&replicationFactor=n (ref §14): 201 with a DatabasePutResult;
    ** an existing name is a ConcurrencyException, 409. Creation is a raft command. The group
    ** is the first `replicationFactor` nodes (all of them when it is absent or larger),
    ** or the record's Topology.Members when it names node tags.
    */
    async createDatabase(ctx) {
        const names = ctx.query.getAll('name');
        const record = parseJsonObject(decodeBody(ctx.raw, ctx.req.headers['content-encoding']).toString('utf8'), 'the database record');
        const name = names.length > 0 && !isNullOrWhiteSpace(names[0]) ? names[0] : record.DatabaseName;
        if (!name) throw ArgumentException("Query string value 'name' must have a non empty value");
        if (record.DatabaseName && lowerInvariant(record.DatabaseName) !== lowerInvariant(name)) {
            throw new RavenError(400, 'Raven.Client.Exceptions.BadRequestException',
                `Name of database record '${record.DatabaseName}' doesn't match the name in the query string '${name}'`);
        }
        if (!/^[A-Za-z0-9_\-.]{1,128}$/.test(name)) {
            throw new RavenError(400, 'Raven.Client.Exceptions.BadRequestException',
                `The name '${name}' is not permitted. Only letters, digits and characters ('_', '-', '.') are allowed.`);
        }
        if (this.cluster.committed.database(name)) {
            throw new RavenError(409, 'Raven.Client.Exceptions.ConcurrencyException', `Database '${name}' already exists!`);
        }
        let members = this.nodes.map((n) => n.index);
        const factor = queryInt(ctx.query, 'replicationFactor', members.length);
        if (factor > 0) members = members.slice(0, factor);
        const wanted = record.Topology && Array.isArray(record.Topology.Members) ? record.Topology.Members : [];
        const tagged = wanted.map((tag) => this.nodes.findIndex((n) => n.tag === tag)).filter((i) => i >= 0);
        if (tagged.length > 0) members = tagged;
        const outcome = await this.submit(ctx, raftRequestId(ctx.query),
            { type: 'createDatabase', typeName: 'AddDatabaseCommand', name, members, ids: databaseIds() });
        if (outcome === null) return null;
        const tags = members.map((i) => this.nodes[i].tag);
        return json(201, {
            RaftCommandIndex: outcome.raftIndex,
            Name: name,
            Topology: {
                Members: tags, Promotables: [], Rehabs: [], ReplicationFactor: tags.length,
                DynamicNodesDistribution: false, Stamp: { Index: outcome.raftIndex, Term: this.cluster.term, LeadersTicks: 0 },
            },
            NodesAddedTo: members.map((i) => this.nodeUrl(this.nodes[i])),
            ShardsDefined: false,
        });
    }

    /* DELETE /admin/databases with {"DatabaseNames":[...],"HardDelete":true} (ref §14) */
    async deleteDatabases(ctx) {
        const body = parseJsonObject(decodeBody(ctx.raw, ctx.req.headers['content-encoding']).toString('utf8'), 'the delete parameters');
        const names = Array.isArray(body.DatabaseNames) ? body.DatabaseNames : [];
        if (names.length === 0) throw ArgumentException('Request should have a property name \'DatabaseNames\' which is mandatory.');
        for (const name of names) {
            if (!this.cluster.committed.database(String(name))) {
                throw new RavenError(500, 'Raven.Client.Exceptions.Database.DatabaseDoesNotExistException',
                    `Database '${name}' does not exist.`);
            }
        }
        const outcome = await this.submit(ctx, raftRequestId(ctx.query),
            { type: 'deleteDatabases', typeName: 'DeleteDatabaseCommand', names: names.map(String) });
        if (outcome === null) return null;
        return json(200, { RaftCommandIndex: outcome.raftIndex, PendingDeletes: [] });
    }

    /* ---- faults ------------------------------------------------------------------------ */

    takeFault(node, req) {
        const i = this.faults.findIndex((f) => f.action !== 'reset_after_handshake'
            && (f.node === null || f.node === node.index)
            && (f.method === null || f.method === req.method)
            && (f.path_contains === null || req.url.includes(f.path_contains)));
        if (i < 0) return null;
        const fault = this.faults[i];
        fault.count -= 1;
        if (fault.count <= 0) this.faults.splice(i, 1);
        return fault;
    }

    /* a `reset_after_handshake` fault for a new TLS connection to `node` */
    takeConnectionFault(node) {
        const i = this.faults.findIndex((f) => f.action === 'reset_after_handshake'
            && (f.node === null || f.node === node.index));
        if (i < 0) return false;
        const fault = this.faults[i];
        fault.count -= 1;
        if (fault.count <= 0) this.faults.splice(i, 1);
        return true;
    }

    /* a `status` fault: the given body, or error JSON of the exception that status stands for */
    faultResponse(req, fault) {
        const status = fault.status || 503;
        if (fault.body !== undefined && fault.body !== null) return { status, headers: {}, body: String(fault.body) };
        if (status === 404) return { status, headers: {}, body: null };
        const types = {
            408: 'System.TimeoutException',
            409: 'Raven.Client.Exceptions.ConcurrencyException',
            410: 'Raven.Client.Exceptions.Database.DatabaseNotRelevantException',
            503: 'Raven.Client.Exceptions.Database.DatabaseLoadTimeoutException',
        };
        const type = types[status] || 'System.InvalidOperationException';
        return errorResponse(req.url, new RavenError(status, type, `Fault injected by the emulator (HTTP ${status})`));
    }

    /* ---- request log ------------------------------------------------------------------- */

    logRequest(node, req) {
        let raftId = null;
        try {
            raftId = new URL(req.url, 'http://emulator').searchParams.get('raft-request-id');
        } catch (e) { /* leave null */ }
        const conn = connectionOf(req);
        const entry = {
            node: node.index,
            method: req.method,
            url: req.url,
            raft_request_id: raftId,
            remote_port: conn ? conn.remotePort : null,     /* one port = one kept-alive connection */
            http_version: req.httpVersion,
            headers: { ...req.headers },
            body: '',
            status: null,
            fault: null,
        };
        this.requests.push(entry);
        if (this.requests.length > REQUEST_LOG_LIMIT) this.requests.shift();
        return entry;
    }

    /* ---- expiry ------------------------------------------------------------------------ */

    /*
    ** The leader's periodic cleanup, every `seconds` (a real server's default is 60,
    ** Cluster.CompareExchangeExpiredDeleteFrequencyInSec); 0 runs none, so that a test
    ** that needs an expired item still there sweeps with POST /expire-now when it means to,
    ** never when the timer happens to fire.
    */
    startExpiryTimer(seconds) {
        clearInterval(this.expiryTimer);
        this.expiryTimer = null;
        this.expiresInterval = seconds;
        if (seconds > 0) {
            this.expiryTimer = setInterval(() => this.cluster.removeExpired(Date.now()), seconds * 1000);
        }
    }
}

/* CompareExchangeKeyTooBigException from the command constructor (ref §2.3, SRV-CMD6) */
function checkKeySize(key) {
    const bytes = Buffer.byteLength(key, 'utf8');
    if (key.length > MAX_KEY_BYTES || bytes > MAX_KEY_BYTES) {
        throw new RavenError(500, 'Raven.Client.Exceptions.CompareExchangeKeyTooBigException',
            `Compare Exchange key cannot exceed ${MAX_KEY_BYTES} bytes, but the key was ${bytes} bytes. `
            + `The invalid key is '${key}'. Parameter 'str'`);
    }
}

/*
** @metadata.@expires (ref §5): the constructor parses it, so a bad one fails the request with
** RachisApplyException (500) before raft. An @expires that is not a string (null included)
** cannot be read as a date either and fails the same way (UNCONFIRMED on a live server; the
** official clients refuse null and non-date values before sending).
*/
function expiresOf(body, key, db) {
    const metadata = body['@metadata'];
    if (metadata === null || typeof metadata !== 'object' || Array.isArray(metadata)) return null;
    if (!Object.prototype.hasOwnProperty.call(metadata, '@expires')) return null;
    const value = metadata['@expires'];
    const ms = typeof value === 'string' ? parseExpires(value) : null;
    if (ms === null) {
        throw new RavenError(500, 'Raven.Server.Rachis.RachisApplyException',
            `Could not apply command AddOrUpdateCompareExchangeCommand - failed to get \`Expires\` for compare exchange key:${key} database:${db}.`);
    }
    return ms;
}

/* ------------------------------------------------------------------------------------------
** CONTROL API (plain HTTP on 127.0.0.1:--control-port, JSON in and out):
**   POST /reset [{"databases":["db",...]}]   everything back to the start, nodes running
**   POST /nodes/{i}/stop | /nodes/{i}/start  node i (0-based) down (sockets reset) or up
**   POST /nodes/{i}/lag {"ms": n}              node i applies the log n ms late (0: at once)
**   GET  /cluster                              leader, term, election, per-node state
**   POST /cluster {"election_ms","operation_timeout_ms","elections_frozen"}   settings
**   POST /leader {"node": i}                   the leader steps down; an election makes i lead
**   POST /databases/{name}/topology {"members":[i,...],"rehabs":[i,...]}   moves a database
**   POST /faults {node,method,path_contains,action,delay_ms,status,body,count}; DELETE /faults
**   GET  /faults                               the pending faults
**   POST /behavior {"pr18822":bool,"pr21644":bool}   GET /behavior
**   POST /wire {"chunked": bool}               HTTP/1.1 bodies chunked (default) or sized
**   POST /topology/bump                        {"etag": n}
**   POST /raft/noop {"count": n}               n raft commands that change nothing (other
**                                              databases' traffic, for the request-id window)
**   POST /expire-now                           {"removed": n}
**   POST /expiry {"interval": S}; GET /expiry  the periodic cleanup's period (0: none)
**   GET  /state[?node=i]                       index, items (node i's copy), requests, ...
**   POST /requests/clear
**   GET  /health                               {"ok": true, "urls": [...]}
** ---------------------------------------------------------------------------------------- */

const FAULT_ACTIONS = ['delay', 'drop_after_apply', 'drop_before_apply', 'status', 'malformed',
    'reset_after_handshake'];

class ControlError extends Error {}

function validateFault(spec, nodeCount) {
    if (spec === null || typeof spec !== 'object') throw new ControlError('a fault is a JSON object');
    if (!FAULT_ACTIONS.includes(spec.action)) throw new ControlError(`action must be one of ${FAULT_ACTIONS.join(', ')}`);
    const node = spec.node === undefined ? null : spec.node;
    if (node !== null && !(Number.isInteger(node) && node >= 0 && node < nodeCount)) {
        throw new ControlError(`node must be null or 0..${nodeCount - 1}`);
    }
    const count = spec.count === undefined || spec.count === null ? 1 : spec.count;
    if (!(Number.isInteger(count) && count > 0)) throw new ControlError('count must be a positive integer');
    return {
        node,
        method: spec.method ? String(spec.method).toUpperCase() : null,
        path_contains: spec.path_contains === undefined || spec.path_contains === null ? null : String(spec.path_contains),
        action: spec.action,
        delay_ms: Number(spec.delay_ms) || 0,
        status: spec.status === undefined || spec.status === null ? null : Number(spec.status),
        body: spec.body === undefined ? null : spec.body,
        count,
    };
}

function nodeIndexes(list, nodeCount, what) {
    if (list === undefined || list === null) return [];
    if (!Array.isArray(list)) throw new ControlError(`${what} is an array of node indexes`);
    const out = [];
    for (const i of list) {
        if (!(Number.isInteger(i) && i >= 0 && i < nodeCount)) throw new ControlError(`${what}: no node ${i}`);
        if (!out.includes(i)) out.push(i);
    }
    return out;
}

function clusterInfo(emu) {
    const c = emu.cluster;
    return {
        leader: c.leader,
        term: c.term,
        index: c.raftIndex,
        election_in_progress: c.leader === null && c.electionTimer !== null,
        majority: c.majority(),
        election_ms: c.config.electionMs,
        operation_timeout_ms: c.config.operationTimeoutMs,
        elections_frozen: c.config.electionsFrozen,
        nodes: c.nodes.map((n) => ({
            index: n.index, tag: n.tag, url: emu.nodeUrl(emu.nodes[n.index]), running: n.running,
            lag_ms: n.lagMs, applied: n.state.applied, pending: n.pending.length,
        })),
    };
}

function recordInfo(record) {
    return { name: record.name, members: record.members, rehabs: record.rehabs, etag: record.etag };
}

function controlState(emu, nodeIndex) {
    const state = nodeIndex === null ? emu.cluster.committed : emu.cluster.nodes[nodeIndex].state;
    const items = {};
    for (const [k, item] of state.items) {
        items[k] = { Index: item.Index, Value: JSON.parse(item.Value.text) };
        if (item.ExpiresAt !== null) items[k].ExpiresAt = new Date(item.ExpiresAt).toISOString();
    }
    const documents = {};
    for (const [k, doc] of state.documents) {
        documents[k] = { Id: doc.id, Collection: doc.collection, ChangeVector: doc.changeVector, Document: documentJson(doc) };
    }
    return {
        index: emu.cluster.raftIndex,
        applied: state.applied,
        items,
        documents,
        requests: emu.requests,
        databases: [...state.databases.values()].map((r) => r.name),
        database_records: [...state.databases.values()].map(recordInfo),
        nodes: emu.nodes.map((n) => ({ index: n.index, tag: n.tag, url: emu.nodeUrl(n), running: n.running })),
        leader: emu.cluster.leader,
        behavior: emu.cluster.behavior,
        topology_etag: Math.max(0, ...[...state.databases.values()].map((r) => r.etag)),
        faults: emu.faults,
        unknown_routes: emu.unknownRoutes,
        raft_history_size: emu.cluster.history.size,
    };
}

/* a raft command the control API makes: it needs a leader now, not later */
function controlCommit(emu, command) {
    if (!emu.cluster.canCommit()) throw new ControlError('no leader now: start nodes or wait for the election');
    return emu.cluster.commit(null, command);
}

async function handleControl(emu, req, body) {
    const url = new URL(req.url, 'http://control');
    const p = url.pathname.replace(/\/+$/, '');
    const m = req.method;
    const n = emu.nodes.length;
    const nodeMatch = /^\/nodes\/(\d+)\/(stop|start|lag)$/.exec(p);
    if (nodeMatch && m === 'POST') {
        const node = emu.nodes[Number(nodeMatch[1])];
        if (!node) throw new ControlError(`no node ${nodeMatch[1]}`);
        if (nodeMatch[2] === 'stop') await emu.stopNode(node);
        else if (nodeMatch[2] === 'start') await emu.startNode(node);
        else {
            const ms = body && Number(body.ms);
            if (!(ms >= 0)) throw new ControlError('lag needs {"ms": n >= 0}');
            emu.cluster.setLag(emu.clusterNode(node), ms);
        }
        return { node: node.index, url: emu.nodeUrl(node), running: node.running, lag_ms: emu.clusterNode(node).lagMs };
    }
    const dbMatch = /^\/databases\/([^/]+)\/topology$/.exec(p);
    if (dbMatch && m === 'POST') {
        const name = decodeURIComponent(dbMatch[1]);
        if (!emu.cluster.committed.database(name)) throw new ControlError(`no database ${name}`);
        const members = nodeIndexes(body && body.members, n, 'members');
        const rehabs = nodeIndexes(body && body.rehabs, n, 'rehabs').filter((i) => !members.includes(i));
        if (members.length === 0) throw new ControlError('a database group needs a member');
        const outcome = controlCommit(emu, { type: 'topology', name, members, rehabs });
        return { ...recordInfo(emu.cluster.committed.database(name)), index: outcome.raftIndex };
    }
    switch (`${m} ${p}`) {
    case 'POST /reset': {
        const databases = body && Array.isArray(body.databases) ? body.databases.map(String) : ['db'];
        emu.cluster.reset(databases);
        emu.faults = [];
        emu.requests = [];
        emu.unknownRoutes = [];
        emu.wire = { chunked: true };
        emu.startExpiryTimer(emu.opts.expiresInterval);
        for (const node of emu.nodes) await emu.startNode(node);
        emu.cluster.installLeader(0);
        return { ok: true, index: 0, databases };
    }
    case 'GET /cluster': return clusterInfo(emu);
    case 'POST /cluster': {
        const b = body || {};
        const config = emu.cluster.config;
        if (b.election_ms !== undefined) {
            if (!(Number(b.election_ms) >= 0)) throw new ControlError('election_ms is a number >= 0');
            config.electionMs = Number(b.election_ms);
        }
        if (b.operation_timeout_ms !== undefined) {
            if (!(Number(b.operation_timeout_ms) > 0)) throw new ControlError('operation_timeout_ms is a number > 0');
            config.operationTimeoutMs = Number(b.operation_timeout_ms);
        }
        if (b.elections_frozen !== undefined) config.electionsFrozen = !!b.elections_frozen;
        emu.cluster.maybeElect();
        return clusterInfo(emu);
    }
    case 'POST /leader': {
        const next = body && body.node;
        if (next !== undefined && !(Number.isInteger(next) && next >= 0 && next < n)) throw new ControlError(`no node ${next}`);
        emu.cluster.stepDown(next);
        return clusterInfo(emu);
    }
    case 'POST /faults': {
        const specs = Array.isArray(body) ? body : [body];
        const added = specs.map((s) => validateFault(s, n));
        emu.faults.push(...added);
        return { ok: true, faults: emu.faults };
    }
    case 'DELETE /faults': emu.faults = []; return { ok: true };
    case 'GET /faults': return { faults: emu.faults };
    case 'POST /behavior': {
        const b = body || {};
        const current = emu.cluster.behavior;
        emu.cluster.setBehavior(b.pr18822 === undefined ? current.pr18822 : b.pr18822,
            b.pr21644 === undefined ? current.pr21644 : b.pr21644);
        return emu.cluster.behavior;
    }
    case 'GET /behavior': return emu.cluster.behavior;
    case 'POST /wire': {
        if (body && body.chunked !== undefined) emu.wire.chunked = !!body.chunked;
        return emu.wire;
    }
    case 'POST /topology/bump': return { etag: controlCommit(emu, { type: 'bump' }).result };
    case 'POST /raft/noop': {
        const count = body && body.count !== undefined ? body.count : 1;
        if (!(Number.isInteger(count) && count > 0 && count <= 100000)) throw new ControlError('count is 1..100000');
        for (let i = 0; i < count; i++) controlCommit(emu, { type: 'noop' });
        return { index: emu.cluster.raftIndex };
    }
    case 'POST /expire-now': return { removed: emu.cluster.removeExpired(Date.now()) };
    case 'POST /expiry': {
        const seconds = body && body.interval;
        if (!(typeof seconds === 'number' && seconds >= 0 && seconds <= MAX_TIMER_S)) {
            throw new ControlError(`interval is 0..${MAX_TIMER_S} seconds (0: no periodic cleanup)`);
        }
        emu.startExpiryTimer(seconds);
        return { interval: emu.expiresInterval };
    }
    case 'GET /expiry': return { interval: emu.expiresInterval };
    case 'GET /state': {
        const node = url.searchParams.get('node');
        if (node !== null && !(Number(node) >= 0 && Number(node) < n)) throw new ControlError(`no node ${node}`);
        return controlState(emu, node === null ? null : Number(node));
    }
    case 'POST /requests/clear': emu.requests = []; return { ok: true };
    case 'GET /health': return { ok: true, urls: emu.nodes.map((node) => emu.nodeUrl(node)) };
    default: return null;
    }
}

function startControlServer(emu) {
    const server = http.createServer(async (req, res) => {
        let status = 200;
        let result;
        try {
            const raw = await readRawBody(req);
            const text = raw.toString('utf8').trim();
            const body = text === '' ? null : JSON.parse(text);
            result = await handleControl(emu, req, body);
            if (result === null) {
                status = 404;
                result = { error: `no control route ${req.method} ${req.url}` };
            }
        } catch (e) {
            status = e instanceof ControlError || e instanceof SyntaxError ? 400 : 500;
            result = { error: e.message };
        }
        const out = JSON.stringify(result);
        res.writeHead(status, { 'Content-Type': JSON_TYPE, 'Content-Length': Buffer.byteLength(out) });
        res.end(out);
    });
    return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(emu.opts.controlPort, HOST, () => {
            server.removeListener('error', reject);
            resolve(server);
        });
    });
}

/* ------------------------------------------------------------------------------------------
** Main
** ---------------------------------------------------------------------------------------- */

async function main() {
    const opts = parseArgs(process.argv.slice(2));
    const emu = new Emulator(opts);
    for (const node of emu.nodes) await emu.startNode(node);
    emu.cluster.installLeader(0);
    const control = await startControlServer(emu);
    emu.startExpiryTimer(opts.expiresInterval);

    const controlUrl = `http://${HOST}:${control.address().port}`;
    const ready = { pid: process.pid, urls: emu.nodes.map((n) => emu.nodeUrl(n)), control_url: controlUrl };
    if (opts.readyFile) {
        const tmp = `${opts.readyFile}.tmp`;
        fs.writeFileSync(tmp, JSON.stringify(ready));
        fs.renameSync(tmp, opts.readyFile);         // readers never see half a file
    }
    process.stdout.write(`${JSON.stringify(ready)}\n`);

    let stopping = false;
    const shutdown = async () => {
        if (stopping) return;
        stopping = true;
        clearInterval(emu.expiryTimer);
        await Promise.all(emu.nodes.map((n) => emu.stopNode(n)));
        control.closeAllConnections();
        control.close(() => process.exit(0));
        setTimeout(() => process.exit(0), 2000).unref();
    };
    process.on('SIGTERM', shutdown);
    process.on('SIGINT', shutdown);
}

main().catch((e) => {
    process.stderr.write(`emulator: ${e.stack || e}\n`);
    process.exit(1);
});
