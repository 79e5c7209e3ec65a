#!/usr/bin/env node
/*
** The seed's locks, run with the official RavenDB Node.js client (npm `ravendb`), so that
** they contend with cmpxchg's Lua locks on the same keys of one server.
**
**   node seed_locks.js --urls URL[,URL...] --database DB --key KEY
**                      [--field ExpiresAt|ReservedUntil] [--lease S] [--hold S] [--rounds N]
**                      [--gap S] [--attempts N] [--log FILE] [--counter FILE]
**                      [--ready FILE --go FILE] [--vanish] [--duration S]
**   node seed_locks.js --urls ... --database DB --key KEY [--field F] --read
**                      [--ready FILE --go FILE]
**   node seed_locks.js --check
**
** Two algorithms, each line for line what its C# does (the comments quote it):
**
** * --field ExpiresAt (the default): the blog's `RavenDbProcessMonitor.Enter/Exit`, whose
**   value is `DistributedLockObject { DateTime? ExpiresAt }` (a 5-minute lease there;
**   `--lease` here).
** * --field ReservedUntil: the RavenDB docs' `SharedResource { DateTime? ReservedUntil }`
**   with `LockResource(store, resourceName, duration)` / `ReleaseResource(...)`
**   (client-api/operations/compare-exchange/overview, region shared_resource).
**
** Both write a plain object `{"<field>": "<date>"}`, the date exactly as C# writes a
** `DateTime.UtcNow`-based value: `yyyy-MM-ddTHH:mm:ss.fffffffZ` (28 chars, 7 fractional
** digits). It is written as a string on purpose: the Node client turns a JS `Date` inside an
** object into `toISOString()` (`...ss.SSSZ`, 3 digits), which is not what C# puts on the
** server. Dates read back are parsed as C# reads them into a `DateTime` (any fraction,
** `Z`, an offset, or nothing) and compared on 100 ns ticks, as `DateTime` compares.
**
** Clock: `DateTime.UtcNow` is the system's wall clock with 100 ns ticks. `Date.now()` is
** that clock truncated to the millisecond, so it is calibrated once against
** `process.hrtime` (at the instant `Date.now()` steps to the next millisecond) and read
** with sub-microsecond resolution after that. The same clock stamps the log, so it
** compares with the Lua side's `core.time()` (CLOCK_REALTIME) without the 1 ms
** truncation faking an overlap.
**
** Rounds: each round acquires, holds `--hold` seconds (the critical section), releases,
** then pauses a random 0..`--gap` seconds (work outside the lock). Every critical section
** appends `js <token> <t_start> <t_end>` to `--log` (epoch seconds): t_start right after
** the acquiring put returned, t_end right before the releasing delete is sent. With
** `--counter FILE`, the section reads the number in FILE, then writes it plus one (an
** overlap with another holder loses an update). With `--vanish`, the first acquisition is
** logged with t_end = the lease end it wrote, and the process exits without releasing (a
** holder that crashed). `--attempts N` gives up after N puts at index 0 (C# loops forever):
** exit status 3, `"busy": true`. `--ready FILE`/`--go FILE`: after connecting, create
** FILE (ready) and wait until the other exists, so that all contenders start together
** (with --read too: a test then orders the read after its own steps, whatever Node's
** start-up takes).
** `--duration S` (the benchmark, bench/run.lua): no new round starts S seconds after go.
**
** stdout: one JSON line, {"sections": [{"token", "requested", "checked", "start", "end",
** "takeover", "attempts", "written"}], "busy"?, "checked"?, "field"}; "requested": when the
** round began to acquire; "checked": the `now` of its last attempt, the time the holder's
** date was compared with (with "busy", of the attempt that gave up). `--read` prints what the seed sees in the key: {"index",
** "raw", "expires" (epoch seconds), "now", "expired"} or {"index": 0} when absent.
** `--check` prints {"ravendb": "<client version>"}: node and the client are there.
*/
'use strict';

const fs = require('fs');
const path = require('path');

let ravendb;
try {
    ravendb = require('ravendb');
} catch (e) {
    process.stderr.write(`seed_locks: the official client is missing (run: cd ${__dirname} && npm ci): ${e.message}\n`);
    process.exit(2);
}

function parseArgs(argv) {
    const opts = {
        urls: [], database: null, key: null, field: 'ExpiresAt', lease: 300, hold: 0,
        rounds: 1, gap: 0, attempts: Infinity, duration: Infinity, log: null, counter: null, ready: null, go: null,
        vanish: false, read: false, check: false,
    };
    const flags = { '--vanish': 'vanish', '--read': 'read', '--check': 'check' };
    for (let i = 0; i < argv.length; i += 1) {
        const name = argv[i];
        if (flags[name]) { opts[flags[name]] = true; continue; }
        const value = argv[i + 1];
        if (value === undefined) throw new Error(`${name} needs a value`);
        i += 1;
        const number = () => {
            const n = Number(value);
            if (!Number.isFinite(n) || n < 0) throw new Error(`${name}: not a number: ${value}`);
            return n;
        };
        switch (name) {
        case '--urls': opts.urls = value.split(',').filter(Boolean); break;
        case '--database': opts.database = value; break;
        case '--key': opts.key = value; break;
        case '--field':
            if (value !== 'ExpiresAt' && value !== 'ReservedUntil') {
                throw new Error('--field must be ExpiresAt or ReservedUntil');
            }
            opts.field = value;
            break;
        case '--lease': opts.lease = number(); break;
        case '--hold': opts.hold = number(); break;
        case '--rounds': opts.rounds = number(); break;
        case '--gap': opts.gap = number(); break;
        case '--duration': opts.duration = number(); break;
        case '--attempts': opts.attempts = number(); break;
        case '--log': opts.log = value; break;
        case '--counter': opts.counter = value; break;
        case '--ready': opts.ready = value; break;
        case '--go': opts.go = value; break;
        default: throw new Error(`unknown option ${name}`);
        }
    }
    if (!opts.check && (opts.urls.length === 0 || !opts.database || !opts.key)) {
        throw new Error('--urls, --database and --key are required');
    }
    return opts;
}

/* ---- DateTime.UtcNow: wall-clock time in 100 ns ticks since the Unix epoch (BigInt) ---- */

const TICKS_PER_SECOND = 10000000n;
const TICKS_PER_MS = 10000n;

/*
** Date.now() stepped to `ms` after the last call that returned the old millisecond and
** no later than the call that returned `ms`: with hrtime read before and after each call,
** the step lies in [before the old call, after the new one]. A process preempted in there
** (2 busy cores) would otherwise set the clock off by the pause and fake overlaps with the
** Lua side's log, so retry until that window is under 20 us (else keep the tightest
** seen), and take its middle.
*/
const clock = (() => {
    let best = null;
    for (let attempt = 0; attempt < 50; attempt++) {
        let before = process.hrtime.bigint();
        const first = Date.now();
        let prev = before;
        let ms;
        let after;
        do {
            prev = before;
            before = process.hrtime.bigint();
            ms = Date.now();
            after = process.hrtime.bigint();
        } while (ms === first);
        const window = after - prev;
        if (best === null || window < best.window) {
            best = { ms: BigInt(ms), hr: prev + window / 2n, window };
        }
        if (best !== null && best.window < 20000n) break;
    }
    return best;
})();

function utcNow() {
    return clock.ms * TICKS_PER_MS + (process.hrtime.bigint() - clock.hr) / 100n;
}

function seconds(ticks) {
    return Number(ticks) / 1e7;
}

function logTime(ticks) {
    const frac = String((ticks % TICKS_PER_SECOND) / 10n).padStart(6, '0');
    return `${ticks / TICKS_PER_SECOND}.${frac}`;
}

/* C#'s JsonDateTimeISO8601Converter for a Utc DateTime: yyyy-MM-ddTHH:mm:ss.fffffffZ */
function formatCSharp(ticks) {
    const whole = ticks / TICKS_PER_SECOND;
    const frac = String(ticks % TICKS_PER_SECOND).padStart(7, '0');
    const date = new Date(Number(whole) * 1000).toISOString().slice(0, 19);
    return `${date}.${frac}Z`;
}

/*
** What C# deserializes into a DateTime: ISO 8601 with any fraction, then Z, an offset or
** nothing (read as UTC here: a Kind=Local time on a UTC machine). Anything else throws, as
** the C# client throws deserializing the value into DistributedLockObject.
*/
function parseCSharp(text) {
    const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?(Z|[+-]\d{2}:\d{2})?$/
        .exec(typeof text === 'string' ? text : '');
    if (!m) throw new Error(`cannot read ${JSON.stringify(text)} as a DateTime`);
    const whole = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]),
        Number(m[5]), Number(m[6])) / 1000;
    let ticks = BigInt(whole) * TICKS_PER_SECOND + BigInt((m[7] || '').padEnd(7, '0') || 0);
    if (m[8] && m[8] !== 'Z') {
        const sign = m[8][0] === '-' ? -1n : 1n;
        const offset = BigInt(Number(m[8].slice(1, 3)) * 3600 + Number(m[8].slice(4, 6)) * 60);
        ticks -= sign * offset * TICKS_PER_SECOND;
    }
    return ticks;
}

/* `DateTime? < DateTime`: false when the field is null or missing (a lifted comparison) */
function before(value, field, now) {
    if (value === null || value === undefined) {
        /* C#: result.Value.ExpiresAt on a null Value is a NullReferenceException */
        throw new Error('the failed put returned no value');
    }
    const at = value[field];
    if (at === null || at === undefined) return false;
    return parseCSharp(at) < now;
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

/*
** A put whose key vanished meanwhile: newer servers (PR 18822) answer Index 0, which the
** Node client (unlike C#'s, which returns Successful = false) throws on as
** "Index is missing". Counted as the unsuccessful result C# gets.
*/
async function put(ops, key, value, index) {
    try {
        return await ops.send(new ravendb.PutCompareExchangeValueOperation(key, value, index));
    } catch (e) {
        if (index !== 0 && /Index is missing/.test(String(e.message))) {
            return { successful: false, index: 0, value: null };
        }
        throw e;
    }
}

/*
** RavenDbProcessMonitor.Enter(lockKey) (--field ExpiresAt), or the docs'
** LockResource(store, resourceName, duration) (--field ReservedUntil). Returns the index
** (the seed's lock token), or null after `attempts` rounds (--attempts; C# has no limit).
*/
async function acquire(ops, opts, stats) {
    const lease = BigInt(Math.round(opts.lease * 1e7));
    for (;;) {
        // C#: var now = DateTime.UtcNow;
        const now = utcNow();
        stats.checked = now;
        let value;
        if (opts.field === 'ExpiresAt') {
            // C#: var lockObject = new DistributedLockObject
            //         { ExpiresAt = DateTime.UtcNow + TimeSpan.FromMinutes(5) };
            value = { ExpiresAt: formatCSharp(utcNow() + lease) };
        } else {
            // C#: SharedResource resource = new SharedResource
            //         { ReservedUntil = now.Add(duration) };
            value = { ReservedUntil: formatCSharp(now + lease) };
        }
        // C#: var result = store.Operations.Send(
        //         new PutCompareExchangeValueOperation<T>(lockKey, lockObject, 0));
        stats.attempts += 1;
        const result = await put(ops, opts.key, value, 0);
        // C#: if (result.Successful) return result.Index;  (the key wasn't there: reserved)
        if (result.successful) {
            stats.takeover = false;
            stats.written = value[opts.field];
            return result.index;
        }
        // C#: if (result.Value.ExpiresAt < now) -- the holder's time expired
        if (before(result.value, opts.field, now)) {
            // C#: var takeLockWithTimeoutResult = store.Operations.Send(
            //         new PutCompareExchangeValueOperation<T>(lockKey, lockObject, result.Index));
            //     if (takeLockWithTimeoutResult.Successful) return takeLockWithTimeoutResult.Index;
            const taken = await put(ops, opts.key, value, result.index);
            if (taken.successful) {
                stats.takeover = true;
                stats.written = value[opts.field];
                return taken.index;
            }
        }
        if (stats.attempts >= opts.attempts) return null;
        // C#: Thread.Sleep(20);  -- wait a little bit and retry
        await sleep(20);
    }
}

/*
** RavenDbProcessMonitor.Exit(lockKey, lockIndex) / the docs' ReleaseResource(store,
** resourceName, index): a delete by the index Enter returned; the result is ignored in C#
** (Successful false: someone else took the lock due to timeout). Newer Node clients throw
** where the key is gone (NODEPR499); that is the same "not ours any more" here.
*/
async function release(ops, opts, index) {
    try {
        const r = await ops.send(new ravendb.DeleteCompareExchangeValueOperation(opts.key, index));
        return Boolean(r && r.successful);
    } catch (e) {
        return false;
    }
}

/* the critical section's own check: read the counter, then write it plus one */
function bumpCounter(file) {
    let n = 0;
    try { n = Number(fs.readFileSync(file, 'utf8')) || 0; } catch (e) { /* first */ }
    fs.writeFileSync(file, String(n + 1));
}

async function waitFile(file) {
    while (!fs.existsSync(file)) await sleep(5);
}

function appendLog(opts, token, start, end) {
    if (opts.log) fs.appendFileSync(opts.log, `js ${token} ${logTime(start)} ${logTime(end)}\n`);
}

/* connect (topology, first connection) before saying ready, then wait for go */
async function getReady(store, opts) {
    await store.operations.send(new ravendb.GetCompareExchangeValueOperation(opts.key));
    if (opts.ready) fs.writeFileSync(opts.ready, `${process.pid}\n`);
    if (opts.go) await waitFile(opts.go);
}

async function runRounds(store, opts) {
    const ops = store.operations;
    await getReady(store, opts);
    const out = { field: opts.field, sections: [] };
    const deadline = Date.now() + opts.duration * 1000;
    for (let round = 0; round < opts.rounds && Date.now() < deadline; round += 1) {
        const requested = utcNow();
        const stats = { attempts: 0, takeover: false, written: null, checked: null };
        const index = await acquire(ops, opts, stats);
        if (index === null) {
            out.busy = true;
            out.attempts = stats.attempts;
            out.checked = seconds(stats.checked);
            return out;
        }
        const start = utcNow();
        const section = { token: index, requested: seconds(requested),
                          checked: seconds(stats.checked), start: seconds(start),
                          takeover: stats.takeover,
                          attempts: stats.attempts, written: stats.written };
        out.sections.push(section);
        if (opts.vanish) {
            // a holder that crashed: the lease stays until it expires
            const ends = parseCSharp(stats.written);
            section.end = seconds(ends);
            appendLog(opts, index, start, ends);
            return out;
        }
        if (opts.counter) bumpCounter(opts.counter);
        if (opts.hold > 0) await sleep(opts.hold * 1000);
        const end = utcNow();
        section.end = seconds(end);
        appendLog(opts, index, start, end);
        section.released = await release(ops, opts, index);
        if (opts.gap > 0) await sleep(Math.random() * opts.gap * 1000);
    }
    return out;
}

/* what the seed sees in the key: C#'s read of result.Value.<field> */
async function readKey(store, opts) {
    const v = await store.operations.send(new ravendb.GetCompareExchangeValueOperation(opts.key));
    if (!v) return { index: 0 };
    const raw = v.value === null || v.value === undefined ? null : v.value[opts.field];
    const now = utcNow();
    const expires = parseCSharp(raw);
    return { index: v.index, raw, expires: seconds(expires), now: seconds(now),
             expired: expires < now };
}

async function main() {
    const opts = parseArgs(process.argv.slice(2));
    if (opts.check) {
        const pkg = JSON.parse(fs.readFileSync(
            path.join(path.dirname(require.resolve('ravendb')), '..', '..', 'package.json'), 'utf8'));
        return { out: { ravendb: pkg.version }, code: 0 };
    }
    const store = new ravendb.DocumentStore(opts.urls, opts.database);
    store.conventions.requestTimeout = 15000;
    store.initialize();
    if (opts.read) {
        if (opts.ready || opts.go) await getReady(store, opts);
        const out = await readKey(store, opts);
        store.dispose();
        return { out, code: 0 };
    }
    const out = await runRounds(store, opts);
    if (!opts.vanish) store.dispose();
    return { out, code: out.busy ? 3 : 0 };
}

main().then(({ out, code }) => {
    process.stdout.write(`${JSON.stringify(out)}\n`, () => process.exit(code));
}, (e) => {
    process.stderr.write(`seed_locks: ${e.stack || e}\n`);
    process.exit(1);
});
