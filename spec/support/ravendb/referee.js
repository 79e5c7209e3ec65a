#!/usr/bin/env node
/*
** The referee: runs a scripted scenario with the official RavenDB Node.js client (npm
** `ravendb`, pinned in package.json) and prints what the client reported, as JSON.
**
**   node referee.js --urls URL[,URL...] --database DB [--control URL]
**                   [--cert client.pem --ca ca.crt] [--timeout MS] < steps.json
**
** stdin holds a JSON array of steps; stdout gets {"results": [...]} with one entry per
** step: {"ok": true, "result": ...} or {"ok": false, "error": {"name", "message"}}.
** A step's string argument "$N.path" is replaced by that field of step N's result
** (e.g. "$0.index"), so one run can create an item and then compare-and-set on its index.
**
** Steps (the client's own operations, as an application calls them):
**   {"op":"put", "key", "value", "index", "metadata"?}      PutCompareExchangeValueOperation
**       metadata["@expires"] may be {"date": "<ISO>"} to pass a JS Date instead of a string
**   {"op":"get", "key"}                                      GetCompareExchangeValueOperation
**   {"op":"get_many", "keys"}                                GetCompareExchangeValuesOperation
**   {"op":"get_prefix", "startsWith", "start"?, "pageSize"?} GetCompareExchangeValuesOperation
**   {"op":"delete", "key", "index"}                          DeleteCompareExchangeValueOperation
**   {"op":"create_database", "name"} / {"op":"delete_database", "name"}   server operations
**   {"op":"purge", "startsWith"}   lists the prefix and deletes each item at its index
** Cluster-wide transactions and documents (issue 18), the client's session API:
**   {"op":"cluster_session", "actions":[...]}   one session with TransactionMode ClusterWide,
**       one saveChanges; actions, in order:
**         {"create_cmpxchg":{"key","value"}}   clusterTransaction.createCompareExchangeValue
**         {"update_cmpxchg":{"key","value"}}   getCompareExchangeValue, then a new value
**         {"delete_cmpxchg":{"key"}}           getCompareExchangeValue, then deleteCompareExchangeValue
**         {"store":{"id","doc","collection"?}} session.store of a new document
**         {"load_update":{"id","set":{...}}}   session.load, then the fields of `set` changed
**         {"delete_doc":{"id"}}                session.delete
**       result: {"transaction_index"} (the store's last transaction index for the database)
**   {"op":"load", "id", "cluster_wide"?}      session.load: {"doc", "change_vector"} or null
**   {"op":"query", "rql", "params"?}          session.advanced.rawQuery(...).all(): the documents
** Helpers (not the client; to set up state or look at it):
**   {"op":"control", "method", "path", "body"?}   the emulator control API (--control)
**   {"op":"raw", "method", "path", "body"?, "headers"?}   plain fetch to the first URL
**   {"op":"sleep", "ms"}
*/
'use strict';

const fs = require('fs');
const ravendb = require('ravendb');

function parseArgs(argv) {
    const opts = { urls: [], database: null, control: null, cert: null, ca: null, timeout: 15000 };
    for (let i = 0; i < argv.length; i += 2) {
        const [name, value] = [argv[i], argv[i + 1]];
        if (value === undefined) throw new Error(`${name} needs a value`);
        switch (name) {
        case '--urls': opts.urls = value.split(',').filter(Boolean); break;
        case '--database': opts.database = value; break;
        case '--control': opts.control = value; break;
        case '--cert': opts.cert = value; break;
        case '--ca': opts.ca = value; break;
        case '--timeout': opts.timeout = Number(value); break;
        default: throw new Error(`unknown option ${name}`);
        }
    }
    if (opts.urls.length === 0 || !opts.database) throw new Error('--urls and --database are required');
    return opts;
}

function openStore(opts) {
    let auth;
    if (opts.cert) {
        auth = { certificate: fs.readFileSync(opts.cert), type: 'pem' };
        if (opts.ca) auth.ca = fs.readFileSync(opts.ca);
    }
    const store = new ravendb.DocumentStore(opts.urls, opts.database, auth);
    store.conventions.requestTimeout = opts.timeout;
    store.initialize();
    return store;
}

/* "$N.a.b" -> results[N].result.a.b, recursively through arrays and objects */
function resolveRefs(value, results) {
    if (typeof value === 'string') {
        const m = /^\$(\d+)((?:\.[^.]+)*)$/.exec(value);
        if (!m) return value;
        let v = results[Number(m[1])] && results[Number(m[1])].result;
        for (const part of m[2].split('.').filter(Boolean)) v = v === undefined || v === null ? v : v[part];
        return v;
    }
    if (Array.isArray(value)) return value.map((v) => resolveRefs(v, results));
    if (value !== null && typeof value === 'object') {
        const out = {};
        for (const [k, v] of Object.entries(value)) out[k] = resolveRefs(v, results);
        return out;
    }
    return value;
}

/* plain JSON of what the client returned (Dates as ISO strings, class instances flattened) */
function plain(value) {
    return value === undefined ? null : JSON.parse(JSON.stringify(value));
}

function compareExchangeResult(r) {
    return { index: r.index, successful: r.successful, value: plain(r.value) };
}

function compareExchangeValue(v) {
    if (v === null || v === undefined) return null;
    return {
        key: v.key,
        index: v.index,
        value: plain(v.value),
        metadata: v.hasMetadata() ? plain(v.metadata) : null,
    };
}

/* the client returns a key -> value dictionary; keep its order as entries */
function compareExchangeValues(dict) {
    return Object.entries(dict).map(([k, v]) => [k, compareExchangeValue(v)]);
}

function metadataArg(metadata) {
    if (!metadata) return undefined;
    const out = { ...metadata };
    const expires = out['@expires'];
    if (expires && typeof expires === 'object' && expires.date) out['@expires'] = new Date(expires.date);
    return out;
}

/* test clean-up on a real server: every item under the prefix, deleted at its own index */
async function purge(ops, prefix) {
    const items = await ops.send(new ravendb.GetCompareExchangeValuesOperation({ startWith: prefix }));
    let deleted = 0;
    for (const item of Object.values(items)) {
        const r = await ops.send(new ravendb.DeleteCompareExchangeValueOperation(item.key, item.index));
        if (r.successful) deleted += 1;
    }
    return { deleted };
}

async function control(opts, step) {
    if (!opts.control) throw new Error('the control step needs --control');
    const res = await fetch(opts.control + step.path, {
        method: step.method || 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: step.body === undefined ? undefined : JSON.stringify(step.body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function raw(opts, step) {
    const res = await fetch(opts.urls[0] + step.path, {
        method: step.method || 'GET',
        headers: step.headers || {},
        body: step.body === undefined ? undefined
            : (typeof step.body === 'string' ? step.body : JSON.stringify(step.body)),
    });
    const text = await res.text();
    let body = text;
    try { body = text ? JSON.parse(text) : null; } catch (e) { /* keep the text */ }
    const headers = {};
    res.headers.forEach((v, k) => { headers[k] = v; });
    return { status: res.status, headers, body };
}

/* one cluster-wide session: the actions, then saveChanges */
async function clusterSession(store, step) {
    const session = store.openSession({ transactionMode: 'ClusterWide' });
    const cluster = session.advanced.clusterTransaction;
    for (const action of step.actions) {
        const [name] = Object.keys(action);
        const a = action[name];
        switch (name) {
        case 'create_cmpxchg': cluster.createCompareExchangeValue(a.key, a.value); break;
        case 'update_cmpxchg': {
            const value = await cluster.getCompareExchangeValue(a.key);
            if (!value) throw new Error(`no compare exchange value ${a.key}`);
            value.value = a.value;
            break;
        }
        case 'delete_cmpxchg': {
            const value = await cluster.getCompareExchangeValue(a.key);
            if (!value) throw new Error(`no compare exchange value ${a.key}`);
            cluster.deleteCompareExchangeValue(value);
            break;
        }
        case 'store': {
            const doc = { ...a.doc };
            await session.store(doc, a.id);
            if (a.collection) session.advanced.getMetadataFor(doc)['@collection'] = a.collection;
            break;
        }
        case 'load_update': {
            const doc = await session.load(a.id);
            if (!doc) throw new Error(`no document ${a.id}`);
            Object.assign(doc, a.set);
            break;
        }
        case 'delete_doc': session.delete(a.id); break;
        default: throw new Error(`unknown cluster session action ${name}`);
        }
    }
    await session.saveChanges();
    return { transaction_index: store.getLastTransactionIndex(store.database) };
}

async function load(store, step) {
    const session = step.cluster_wide ? store.openSession({ transactionMode: 'ClusterWide' }) : store.openSession();
    const doc = await session.load(step.id);
    if (!doc) return null;
    return { doc: plain(doc), change_vector: session.advanced.getChangeVectorFor(doc) };
}

async function query(store, step) {
    const session = store.openSession();
    let q = session.advanced.rawQuery(step.rql);
    for (const [k, v] of Object.entries(step.params || {})) q = q.addParameter(k, v);
    return plain(await q.all());
}

async function runStep(store, opts, step) {
    const ops = store.operations;
    switch (step.op) {
    case 'put':
        return compareExchangeResult(await ops.send(new ravendb.PutCompareExchangeValueOperation(
            step.key, step.value, step.index, metadataArg(step.metadata))));
    case 'get':
        return compareExchangeValue(await ops.send(new ravendb.GetCompareExchangeValueOperation(step.key)));
    case 'get_many':
        return compareExchangeValues(await ops.send(new ravendb.GetCompareExchangeValuesOperation({ keys: step.keys })));
    case 'get_prefix':
        return compareExchangeValues(await ops.send(new ravendb.GetCompareExchangeValuesOperation({
            startWith: step.startsWith, start: step.start, pageSize: step.pageSize,
        })));
    case 'delete':
        return compareExchangeResult(await ops.send(new ravendb.DeleteCompareExchangeValueOperation(step.key, step.index)));
    case 'create_database':
        return plain(await store.maintenance.server.send(new ravendb.CreateDatabaseOperation({ databaseName: step.name })));
    case 'delete_database':
        return plain(await store.maintenance.server.send(new ravendb.DeleteDatabasesOperation({
            databaseNames: [step.name], hardDelete: true,
        })));
    case 'purge': return purge(ops, step.startsWith);
    case 'cluster_session': return clusterSession(store, step);
    case 'load': return load(store, step);
    case 'query': return query(store, step);
    case 'control': return control(opts, step);
    case 'raw': return raw(opts, step);
    case 'sleep': await new Promise((r) => setTimeout(r, step.ms)); return null;
    default: throw new Error(`unknown step op ${step.op}`);
    }
}

async function main() {
    const opts = parseArgs(process.argv.slice(2));
    const steps = JSON.parse(fs.readFileSync(0, 'utf8'));
    const store = openStore(opts);
    const results = [];
    for (const step of steps) {
        try {
            results.push({ ok: true, result: await runStep(store, opts, resolveRefs(step, results)) });
        } catch (e) {
            results.push({ ok: false, error: { name: e.name, message: String(e.message).slice(0, 2000) } });
        }
    }
    store.dispose();
    process.stdout.write(`${JSON.stringify({ results })}\n`);
}

main().then(() => process.exit(0), (e) => {
    process.stderr.write(`referee: ${e.stack || e}\n`);
    process.exit(1);
});
