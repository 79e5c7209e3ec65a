#!/usr/bin/env node
/*
** A RavenDB compare-exchange emulator for the cmpxchg test suite.
**
** It answers the HTTP API that RavenDB clients use for compare-exchange (cmpxchg) items,
** database topology and database creation/deletion, the way a RavenDB 6.x/7.x cluster does.
** Every behaviour is written from the protocol reference, doc/ravendb-protocol.md
** ("ref §N" below), and from the RavenDB server source it cites; the official npm `ravendb`
** client referees it (spec/support/ravendb/referee.js, spec/integration/ravendb_referee_spec.lua).
**
** Node.js standard library only: no npm dependency and no code shared with any client.
**
** One process serves every node of a pretend cluster (one state, one raft log), plus a control
** API on its own loopback port that the tests use to reset the state, stop and start nodes,
** inject faults and switch between older and newer server behaviour.
**
**   node emulator.js [--ports 18080,18081,18082] [--control-port 18090] [--tls-dir DIR]
**                    [--behavior new|old] [--expires-interval SECONDS] [--databases db,other]
**                    [--ready-file PATH] [--verbose]
**
** Everything listens on 127.0.0.1 only. A port of 0 lets the system pick a free one; the real ports are written to --ready-file
** (JSON {pid, urls, control_url}) once everything listens. The control API is described at
** CONTROL API below.
*/
'use strict';

const http = require('http');
const https = require('https');
const fs = require('fs');
const path = require('path');
const zlib = require('zlib');
const crypto = require('crypto');

const SERVER_VERSION = '6.0.105';       // Raven-Server-Version and topology ServerVersion
const NODE_TAGS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ';
const HISTORY_LIMIT = 4096;             // Cluster.LogHistoryMaxEntries (ref §6.4)
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

function usage(message) {
    if (message) process.stderr.write(`emulator: ${message}\n`);
    process.stderr.write('usage: emulator.js [--ports P1,P2,...] [--control-port P] [--tls-dir DIR]\n'
        + '                   [--behavior new|old] [--expires-interval S] [--databases a,b]\n'
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
        case '--ready-file': opts.readyFile = value(); break;
        case '--verbose': opts.verbose = true; break;
        case '-h': case '--help': usage(); break;
        default: usage(`unknown option ${arg}`);
        }
    }
    if (opts.ports.length === 0 || opts.ports.length > NODE_TAGS.length) usage('need 1..26 ports');
    if (opts.behavior !== 'new' && opts.behavior !== 'old') usage('--behavior is new or old');
    if (!(opts.expiresInterval > 0)) usage('--expires-interval must be a positive number');
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
** Cluster state: databases, compare-exchange items, the raft index and its request-id history
** ---------------------------------------------------------------------------------------- */

class Cluster {
    constructor(defaultBehavior, databases) {
        this.defaultBehavior = defaultBehavior;     // what /reset goes back to
        this.reset(databases);
    }

    reset(databases) {
        this.raftIndex = 0;
        this.databases = new Map();     // lower-cased name -> name as created
        this.items = new Map();         // storage key -> {Index, Value: RawJson, ExpiresAt}
        this.history = new Map();       // raft request id -> {raftIndex, result}
        this.topologyEtag = 1;
        this.setBehavior(this.defaultBehavior === 'new', this.defaultBehavior === 'new');
        for (const name of databases) this.databases.set(lowerInvariant(name), name);
    }

    /* true = the PR is applied (newer servers); ref §2.2 (PR18822) and §4 (PR21644) */
    setBehavior(pr18822, pr21644) {
        this.behavior = { pr18822: !!pr18822, pr21644: !!pr21644 };
    }

    hasDatabase(name) {
        return this.databases.has(lowerInvariant(name));
    }

    /* storage key = lower(db + "/" + key) (ref §1.1, SRV-KEY) */
    static storageKey(db, key) {
        return lowerInvariant(`${db}/${key}`);
    }

    /*
    ** Every PUT/DELETE that reaches the leader is a raft command with its own log index,
    ** whether or not its compare succeeds: the handler reports Successful = (result.Index ==
    ** raftIndex), which needs the command's own index (ref §2.2, SRV-PUT6). So a failed
    ** compare, a create refused by PR18822 and a delete of a missing key all use up an index,
    ** and the next successful write's index jumps; clients must not expect consecutive values.
    **
    ** A command whose raft request id is still in the history is not applied again: the
    ** leader returns the original (raftIndex, result) (ref §6.4, SRV-LEAD/SRV-HIST).
    */
    runRaftCommand(raftRequestId, apply) {
        const previous = this.history.get(raftRequestId);
        if (previous) return previous;
        this.raftIndex += 1;
        const outcome = { raftIndex: this.raftIndex, result: apply(this.raftIndex) };
        this.history.set(raftRequestId, outcome);
        if (this.history.size > HISTORY_LIMIT) {
            this.history.delete(this.history.keys().next().value);   // forget the oldest id
        }
        return outcome;
    }

    get(db, key) {
        return this.items.get(Cluster.storageKey(db, key)) || null;
    }

    /* AddOrUpdateCompareExchangeCommand.ExecuteInternal (ref §2.2, SRV-CMD5/6) */
    put(db, key, index, value, expiresAt, raftIndex) {
        const storageKey = Cluster.storageKey(db, key);
        const current = this.items.get(storageKey);
        if (current && current.Index !== index) {
            return { Index: current.Index, Value: current.Value };   // concurrency violation
        }
        if (!current && index !== 0 && this.behavior.pr18822) {
            return { Index: 0, Value: null };
        }
        this.items.set(storageKey, { Index: raftIndex, Value: value, ExpiresAt: expiresAt });
        return { Index: raftIndex, Value: value };
    }

    /* RemoveCompareExchangeCommand.ExecuteInternal (ref §4, SRV-CMD5/6, PR21644) */
    remove(db, key, index, raftIndex) {
        const storageKey = Cluster.storageKey(db, key);
        const current = this.items.get(storageKey);
        if (!current) {
            return this.behavior.pr21644 ? { Index: 0, Value: null } : { Index: raftIndex, Value: null };
        }
        if (current.Index !== index) return { Index: current.Index, Value: current.Value };
        this.items.delete(storageKey);
        return { Index: raftIndex, Value: current.Value };
    }

    /*
    ** GetCompareExchangeValuesStartsWith (ref §3.1, SRV-GET6): storage keys under
    ** lower(db/prefix) in byte order, `start` skipped, at most `pageSize`; the Key written
    ** back is the storage key without "db/", so lower-cased (ref §3.2). Nothing is filtered:
    ** expired items (ref §5) and rvn-atomic/ guards (ref §10) are listed too.
    */
    list(db, prefix, start, pageSize) {
        const dbPrefix = lowerInvariant(`${db}/`);
        const wanted = Cluster.storageKey(db, prefix || '');
        const keys = [...this.items.keys()].filter((k) => k.startsWith(wanted)).sort(compareUtf8);
        const from = Math.max(start, 0);
        const count = Math.max(pageSize, 0);
        return keys.slice(from, from + count).map((k) => {
            const item = this.items.get(k);
            return { Key: k.slice(dbPrefix.length), Value: item.Value, Index: item.Index };
        });
    }

    /*
    ** The leader's ClusterObserver deletes expired items in one raft command, and only when
    ** something has expired (ref §5, SRV-OBS, SRV-EXP). Returns how many it removed.
    */
    removeExpired(nowMs) {
        const expired = [...this.items.entries()]
            .filter(([, item]) => item.ExpiresAt !== null && item.ExpiresAt <= nowMs)
            .map(([k]) => k);
        if (expired.length === 0) return 0;
        this.raftIndex += 1;
        for (const k of expired) this.items.delete(k);
        return expired.length;
    }

    createDatabase(name) {
        this.raftIndex += 1;
        this.databases.set(lowerInvariant(name), name);
        return this.raftIndex;
    }

    /* deleting a database drops its compare-exchange items as well */
    deleteDatabases(names) {
        this.raftIndex += 1;
        for (const name of names) {
            this.databases.delete(lowerInvariant(name));
            const prefix = lowerInvariant(`${name}/`);
            for (const k of [...this.items.keys()]) if (k.startsWith(prefix)) this.items.delete(k);
        }
        return this.raftIndex;
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
    if (value === null || value.trim() === '') {
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

class Emulator {
    constructor(opts) {
        this.opts = opts;
        this.cluster = new Cluster(opts.behavior, opts.databases);
        this.scheme = opts.tlsDir ? 'https' : 'http';
        this.nodes = opts.ports.map((port, i) => ({
            index: i, tag: NODE_TAGS[i], port, server: null, sockets: new Set(), running: false,
        }));
        this.faults = [];
        this.requests = [];
        this.unknownRoutes = [];
        this.tls = opts.tlsDir ? this.loadTls(opts.tlsDir) : null;
    }

    loadTls(dir) {
        const read = (name) => fs.readFileSync(path.join(dir, name));
        return { key: read('server.key'), cert: read('server.crt'), ca: read('ca.crt') };
    }

    nodeUrl(node) {
        return `${this.scheme}://${HOST}:${node.port}`;
    }

    /* ---- node listeners ---------------------------------------------------------------- */

    /*
    ** TLS: the node asks for a client certificate but lets the handshake finish without a
    ** valid one (rejectUnauthorized: false), then answers 403 InvalidAuth as RavenDB does
    ** (ref §7.1, §8.1, SRV-ROUTER): its Kestrel accepts any certificate at the TLS layer and
    ** the router decides. A certificate that the CA did not sign is "unknown to the server".
    */
    createServer(node) {
        const handler = (req, res) => this.handleNodeRequest(node, req, res).catch((e) => {
            process.stderr.write(`emulator: ${req.method} ${req.url}: ${e.stack || e}\n`);
            req.socket.destroy();
        });
        const server = this.tls
            ? https.createServer({ ...this.tls, requestCert: true, rejectUnauthorized: false }, handler)
            : http.createServer(handler);
        server.on('connection', (socket) => {
            node.sockets.add(socket);
            socket.on('close', () => node.sockets.delete(socket));
        });
        server.on('clientError', (err, socket) => socket.destroy());
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
                resolve();
            });
        });
    }

    /* closes the listener and resets its open connections: clients see refused / reset */
    stopNode(node) {
        if (!node.running) return Promise.resolve();
        node.running = false;
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
            if (req.socket.destroyed || !(e instanceof RavenError)) {
                entry.status = 'aborted';       // the client hung up mid-body: nothing to answer
                req.socket.destroy();
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
                if (req.socket.destroyed) {
                    entry.status = 'dropped';
                    return;
                }
            }
            if (fault.action === 'status') {
                this.send(req, res, this.faultResponse(req, fault), entry);
                return;
            }
        }

        const response = this.route(node, req, raw);
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
        if (!this.tls || req.socket.authorized) return null;
        const cert = req.socket.getPeerCertificate();
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

    drop(req, entry) {
        entry.status = 'dropped';
        req.socket.destroy();
    }

    send(req, res, response, entry) {
        const headers = {
            'Content-Type': JSON_TYPE,
            'Raven-Server-Version': SERVER_VERSION,
            ...response.headers,
        };
        let body = response.body === null || response.body === undefined
            ? Buffer.alloc(0) : Buffer.from(response.body, 'utf8');
        if (response.status === 204) {
            delete headers['Content-Type'];     // NoContentStatus() drops it
            body = Buffer.alloc(0);
        } else {
            if (body.length > 0 && acceptsGzip(req)) {      // ref §8.4: response compression
                body = zlib.gzipSync(body);
                headers['Content-Encoding'] = 'gzip';
                headers.Vary = 'Accept-Encoding';
            }
            headers['Content-Length'] = body.length;
        }
        entry.status = response.status;
        if (this.opts.verbose) process.stderr.write(`${entry.node} ${req.method} ${req.url} -> ${response.status}\n`);
        if (res.destroyed) return;
        res.writeHead(response.status, headers);
        res.end(body);
    }

    /*
    ** Routing as RequestRouter does it: an unknown path or method is a RouteNotFoundException,
    ** i.e. 400 with the usual error JSON (ref §7.1/§7.2; the 6.x router throws it rather than
    ** writing the older {"Type":"Error"} body).
    */
    route(node, req, raw) {
        const url = new URL(req.url, 'http://emulator');
        const segments = url.pathname.split('/').filter(Boolean).map((s) => {
            try { return decodeURIComponent(s); } catch (e) { return s; }
        });
        const ctx = { node, req, url, query: url.searchParams, raw };
        try {
            const response = this.dispatch(ctx, segments);
            if (response) return response;
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
        return null;
    }

    routeNotFound(node, req) {
        const { pathname, search } = new URL(req.url, 'http://emulator');
        const message = `There is no handler for path: ${req.method} ${pathname}${search}`;
        this.unknownRoutes.push({ node: node.index, method: req.method, url: req.url });
        if (this.unknownRoutes.length > UNKNOWN_ROUTE_LIMIT) this.unknownRoutes.shift();
        process.stderr.write(`emulator: unknown route ${req.method} ${req.url}\n`);
        return errorResponse(req.url, new RavenError(400, 'Raven.Client.Exceptions.Routing.RouteNotFoundException', message));
    }

    /* ---- /databases/{db}/... ----------------------------------------------------------- */

    /*
    ** Database routes. A database that does not exist makes the router throw
    ** DatabaseDoesNotExistException, which the status map does not list, so 500 (ref §7.2;
    ** RouteInformation.CreateDatabase). The router sets no Database-Missing header on this
    ** path (only /topology does), so neither does the emulator.
    */
    databaseRoute(ctx, db, rest) {
        const method = ctx.req.method;
        const known = (rest === 'cmpxchg' && ['GET', 'PUT', 'DELETE'].includes(method))
            || (rest === 'healthcheck' && method === 'GET')
            || (rest === 'configuration/client' && method === 'GET');
        if (!known) return null;
        if (!this.cluster.hasDatabase(db)) {
            throw new RavenError(500, 'Raven.Client.Exceptions.Database.DatabaseDoesNotExistException',
                `Database '${db}' does not exist.`);
        }
        const headers = this.topologyHeaders(ctx.req);
        let response;
        try {
            response = this.databaseHandler(ctx, db, rest);
        } catch (e) {
            if (!(e instanceof RavenError)) throw e;
            response = errorResponse(ctx.req.url, e);
        }
        response.headers = { ...headers, ...response.headers };
        return response;
    }

    databaseHandler(ctx, db, rest) {
        if (rest === 'healthcheck') return { status: 204, headers: {}, body: null };
        if (rest === 'configuration/client') return json(200, { Etag: 0, Configuration: null });
        switch (ctx.req.method) {
        case 'GET': return this.getCompareExchange(ctx, db);
        case 'PUT': return this.putCompareExchange(ctx, db);
        default: return this.deleteCompareExchange(ctx, db);
        }
    }

    /* DatabaseRequestHandler: Refresh-Topology when the server's etag is newer (ref §6.3, SRV-DRH) */
    topologyHeaders(req) {
        const etag = headerLong(req, 'Topology-Etag');
        if (etag !== null && this.cluster.topologyEtag > etag) return { 'Refresh-Topology': 'true' };
        return {};
    }

    /* GET /databases/{db}/cmpxchg (ref §3) */
    getCompareExchange(ctx, db) {
        const keys = ctx.query.getAll('key');
        if (keys.length > 0) return this.getByKeys(db, keys);
        const start = queryInt(ctx.query, 'start', 0);
        const pageSize = queryInt(ctx.query, 'pageSize', 2147483647);
        const startsWith = queryString(ctx.query, 'startsWith', false);
        return json(200, { Results: this.cluster.list(db, startsWith, start, pageSize) });
    }

    /* one missing key -> 404 with no body; several -> Index -1, Value null (ref §3.3) */
    getByKeys(db, keys) {
        const results = [];
        for (const key of keys) {
            const item = this.cluster.get(db, key);
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
    putCompareExchange(ctx, db) {
        const key = queryString(ctx.query, 'key', true);
        const raftId = raftRequestId(ctx.query);
        const index = queryLong(ctx.query, 'index');
        const text = decodeBody(ctx.raw, ctx.req.headers['content-encoding']).toString('utf8').replace(/^\uFEFF/, '');
        const body = parseJsonObject(text, 'the compare exchange value');
        if (index < 0) throw new RavenError(500, 'System.IO.InvalidDataException', 'Index must be a non-negative number');
        checkKeySize(key);
        const expiresAt = expiresOf(body, key, db);
        const value = new RawJson(compactJson(text.trim()));
        const { raftIndex, result } = this.cluster.runRaftCommand(raftId,
            (i) => this.cluster.put(db, key, index, value, expiresAt, i));
        return json(200, { Index: result.Index, Value: result.Value, Successful: result.Index === raftIndex });
    }

    /* DELETE /databases/{db}/cmpxchg?key=&index=&raft-request-id= (ref §4) */
    deleteCompareExchange(ctx, db) {
        const key = queryString(ctx.query, 'key', true);
        const raftId = raftRequestId(ctx.query);
        const index = queryLong(ctx.query, 'index');
        if (index < 0) throw new RavenError(500, 'System.IO.InvalidDataException', 'Index must be a non-negative number');
        const { raftIndex, result } = this.cluster.runRaftCommand(raftId,
            (i) => this.cluster.remove(db, key, index, i));
        return json(200, { Index: result.Index, Value: result.Value, Successful: result.Index === raftIndex });
    }

    /* ---- topology and cluster ---------------------------------------------------------- */

    /* GET /topology?name=db (ref §6.1, SRV-TOPO): every configured node, running or not */
    getTopology(ctx) {
        const name = ctx.query.getAll('name');
        if (name.length === 0 || name[0].trim() === '') throw ArgumentException("Query string value 'name' must have a non empty value");
        if (name.length > 1) throw ArgumentException("Query string value 'name' must appear exactly once");
        const db = name[0];
        if (!this.cluster.hasDatabase(db)) {
            return json(503, { Type: 'Error', Message: `Database ${db} wasn't found` },
                { 'Database-Missing': encodeURIComponent(db) });
        }
        const nodes = this.nodes.map((node) => ({
            Url: this.nodeUrl(node),
            ClusterTag: node.tag,
            ServerRole: 'Member',
            Database: this.cluster.databases.get(lowerInvariant(db)),
            ServerVersion: SERVER_VERSION,
        }));
        return json(200, { Promotables: [], Nodes: nodes, Etag: this.cluster.topologyEtag });
    }

    /* GET /cluster/topology: what the ClusterRequestExecutor of server operations reads */
    getClusterTopology(ctx) {
        const members = {};
        for (const node of this.nodes) members[node.tag] = this.nodeUrl(node);
        const status = {};
        for (const node of this.nodes) {
            if (node !== ctx.node) status[node.tag] = { Name: node.tag, Connected: node.running, ErrorDetails: null };
        }
        return json(200, {
            Topology: {
                TopologyId: 'cmpxchg-emulator',
                AllNodes: members,
                Members: members,
                Promotables: {},
                Watchers: {},
                LastNodeId: this.nodes[this.nodes.length - 1].tag,
                Etag: this.cluster.topologyEtag,
            },
            Etag: this.cluster.topologyEtag,
            Leader: this.nodes[0].tag,
            LeaderShipDuration: 0,
            CurrentState: ctx.node.index === 0 ? 'Leader' : 'Follower',
            NodeTag: ctx.node.tag,
            CurrentTerm: 1,
            NodeLicenseDetails: {},
            LastStateChangeReason: 'emulated cluster',
            Status: status,
        });
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
            CurrentState: ctx.node.index === 0 ? 'Leader' : 'Follower',
        });
    }

    getBuildVersion() {
        return json(200, {
            BuildVersion: 60105, ProductVersion: '6.0', CommitHash: 'emulator', FullVersion: SERVER_VERSION,
        });
    }

    /*
    ** PUT /admin/databases?name=db&replicationFactor=n (ref §14): 201 with a DatabasePutResult;
    ** an existing name is a ConcurrencyException, 409. Creation is a raft command.
    */
    createDatabase(ctx) {
        const names = ctx.query.getAll('name');
        const record = parseJsonObject(decodeBody(ctx.raw, ctx.req.headers['content-encoding']).toString('utf8'), 'the database record');
        const name = names.length > 0 && names[0].trim() !== '' ? names[0] : record.DatabaseName;
        if (!name) throw ArgumentException("Query string value 'name' must have a non empty value");
        if (record.DatabaseName && lowerInvariant(record.DatabaseName) !== lowerInvariant(name)) {
            throw new RavenError(400, 'Raven.Client.Exceptions.BadRequestException',
                `Name of database record '${record.DatabaseName}' doesn't match the name in the query string '${name}'`);
        }
        if (!/^[A-Za-z0-9_\-.]{1,128}$/.test(name)) {
            throw new RavenError(400, 'Raven.Client.Exceptions.BadRequestException',
                `The name '${name}' is not permitted. Only letters, digits and characters ('_', '-', '.') are allowed.`);
        }
        if (this.cluster.hasDatabase(name)) {
            throw new RavenError(409, 'Raven.Client.Exceptions.ConcurrencyException', `Database '${name}' already exists!`);
        }
        const raftIndex = this.cluster.createDatabase(name);
        const tags = this.nodes.map((n) => n.tag);
        return json(201, {
            RaftCommandIndex: raftIndex,
            Name: name,
            Topology: {
                Members: tags, Promotables: [], Rehabs: [], ReplicationFactor: tags.length,
                DynamicNodesDistribution: false, Stamp: { Index: raftIndex, Term: 1, LeadersTicks: 0 },
            },
            NodesAddedTo: this.nodes.map((n) => this.nodeUrl(n)),
            ShardsDefined: false,
        });
    }

    /* DELETE /admin/databases with {"DatabaseNames":[...],"HardDelete":true} (ref §14) */
    deleteDatabases(ctx) {
        const body = parseJsonObject(decodeBody(ctx.raw, ctx.req.headers['content-encoding']).toString('utf8'), 'the delete parameters');
        const names = Array.isArray(body.DatabaseNames) ? body.DatabaseNames : [];
        if (names.length === 0) throw ArgumentException('Request should have a property name \'DatabaseNames\' which is mandatory.');
        for (const name of names) {
            if (!this.cluster.hasDatabase(String(name))) {
                throw new RavenError(500, 'Raven.Client.Exceptions.Database.DatabaseDoesNotExistException',
                    `Database '${name}' does not exist.`);
            }
        }
        const raftIndex = this.cluster.deleteDatabases(names.map(String));
        return json(200, { RaftCommandIndex: raftIndex, PendingDeletes: [] });
    }

    /* ---- faults ------------------------------------------------------------------------ */

    takeFault(node, req) {
        const i = this.faults.findIndex((f) => (f.node === null || f.node === node.index)
            && (f.method === null || f.method === req.method)
            && (f.path_contains === null || req.url.includes(f.path_contains)));
        if (i < 0) return null;
        const fault = this.faults[i];
        fault.count -= 1;
        if (fault.count <= 0) this.faults.splice(i, 1);
        return fault;
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
        const entry = {
            node: node.index,
            method: req.method,
            url: req.url,
            raft_request_id: raftId,
            remote_port: req.socket.remotePort,     /* one port = one kept-alive connection */
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

    startExpiryTimer() {
        this.expiryTimer = setInterval(() => this.cluster.removeExpired(Date.now()),
            this.opts.expiresInterval * 1000);
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
**   POST /faults {node,method,path_contains,action,delay_ms,status,body,count}; DELETE /faults
**   GET  /faults                               the pending faults
**   POST /behavior {"pr18822":bool,"pr21644":bool}   GET /behavior
**   POST /topology/bump                        {"etag": n}
**   POST /expire-now                           {"removed": n}
**   GET  /state                                index, items, requests (last 1000), and more
**   POST /requests/clear
**   GET  /health                               {"ok": true, "urls": [...]}
** ---------------------------------------------------------------------------------------- */

const FAULT_ACTIONS = ['delay', 'drop_after_apply', 'drop_before_apply', 'status', 'malformed'];

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

function controlState(emu) {
    const items = {};
    for (const [k, item] of emu.cluster.items) {
        items[k] = { Index: item.Index, Value: JSON.parse(item.Value.text) };
        if (item.ExpiresAt !== null) items[k].ExpiresAt = new Date(item.ExpiresAt).toISOString();
    }
    return {
        index: emu.cluster.raftIndex,
        items,
        requests: emu.requests,
        databases: [...emu.cluster.databases.values()],
        nodes: emu.nodes.map((n) => ({ index: n.index, tag: n.tag, url: emu.nodeUrl(n), running: n.running })),
        behavior: emu.cluster.behavior,
        topology_etag: emu.cluster.topologyEtag,
        faults: emu.faults,
        unknown_routes: emu.unknownRoutes,
        raft_history_size: emu.cluster.history.size,
    };
}

async function handleControl(emu, req, body) {
    const p = new URL(req.url, 'http://control').pathname.replace(/\/+$/, '');
    const m = req.method;
    const nodeMatch = /^\/nodes\/(\d+)\/(stop|start)$/.exec(p);
    if (nodeMatch && m === 'POST') {
        const node = emu.nodes[Number(nodeMatch[1])];
        if (!node) throw new ControlError(`no node ${nodeMatch[1]}`);
        if (nodeMatch[2] === 'stop') await emu.stopNode(node);
        else await emu.startNode(node);
        return { node: node.index, url: emu.nodeUrl(node), running: node.running };
    }
    switch (`${m} ${p}`) {
    case 'POST /reset': {
        const databases = body && Array.isArray(body.databases) ? body.databases.map(String) : ['db'];
        emu.cluster.reset(databases);
        emu.faults = [];
        emu.requests = [];
        emu.unknownRoutes = [];
        for (const node of emu.nodes) await emu.startNode(node);
        return { ok: true, index: 0, databases };
    }
    case 'POST /faults': {
        const specs = Array.isArray(body) ? body : [body];
        const added = specs.map((s) => validateFault(s, emu.nodes.length));
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
    case 'POST /topology/bump': emu.cluster.topologyEtag += 1; return { etag: emu.cluster.topologyEtag };
    case 'POST /expire-now': return { removed: emu.cluster.removeExpired(Date.now()) };
    case 'GET /state': return controlState(emu);
    case 'POST /requests/clear': emu.requests = []; return { ok: true };
    case 'GET /health': return { ok: true, urls: emu.nodes.map((n) => emu.nodeUrl(n)) };
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
    const control = await startControlServer(emu);
    emu.startExpiryTimer();

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
