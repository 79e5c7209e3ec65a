// A misbehaving RavenDB and etcd on 127.0.0.1, for the hostile-server specs
// (spec/integration/hostile_spec.lua and nginx_hostile_spec.lua; the cases
// they run are spec/support/hostile_cases.lua). Node standard library only.
//
//   node hostile_server.js [CERT_DIR]
//
// One listener per case, so the case is chosen by the port a store is opened
// on. A listener answers the requests a store makes when it opens (RavenDB's
// GET /topology, etcd's count_only range and authenticate) as a server would,
// and misbehaves on every other request; an "at open" case misbehaves on
// those too. Cases marked tls listen with CERT_DIR/server.crt (made by
// scripts/make-test-certs). Replies are written byte by byte on raw sockets,
// so nothing here tidies them up.
//
// Prints one JSON line: {"pid": P, "control": PORT, "ports": {"case": PORT}},
// then serves until killed or until an hour passes.
//   GET http://127.0.0.1:CONTROL/hits -> {"case": requests received, ...}
// The "trap" listener answers nothing useful: a client that follows a
// redirect or a foreign topology there shows up in its hits.
'use strict';
const fs = require('fs');
const net = require('net');
const path = require('path');
const tls = require('tls');
const zlib = require('zlib');

const MB = 1024 * 1024;
const hits = {};
const ports = {};
let certs = null;
if (process.argv[2]) {
    const dir = process.argv[2];
    certs = { cert: fs.readFileSync(path.join(dir, 'server.crt')),
              key: fs.readFileSync(path.join(dir, 'server.key')) };
}

/* {====================== writing replies ====================== */

function head(status, fields) {
    const lines = [`HTTP/1.1 ${status} X`];
    for (const [name, value] of Object.entries(fields || {})) lines.push(`${name}: ${value}`);
    return lines.join('\r\n') + '\r\n\r\n';
}

// a complete JSON reply; the connection stays open for the next request
function answer(req, status, body, fields) {
    const data = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body), 'utf8');
    req.socket.write(head(status, Object.assign({ 'Content-Type': 'application/json',
        'Content-Length': data.length }, fields)));
    req.socket.write(data);
    req.done();
}

// writes `total` bytes of `piece` (repeated) with back-pressure; stops when
// the client goes away, then calls `then` if given
function stream(socket, total, piece, then) {
    let left = total;
    const more = () => {
        while (left > 0) {
            if (socket.destroyed) return;
            const k = Math.min(left, piece.length);
            left -= k;
            if (!socket.write(k === piece.length ? piece : piece.subarray(0, k))) {
                socket.once('drain', more);
                return;
            }
        }
        if (then && !socket.destroyed) then();
    };
    more();
}

// writes one byte of `text` (repeated) every `ms` until the client goes away
// or `seconds` pass, then closes
function trickle(socket, text, ms, seconds) {
    let i = 0;
    const started = Date.now();
    const timer = setInterval(() => {
        if (socket.destroyed || Date.now() - started > seconds * 1000) {
            clearInterval(timer);
            socket.destroy();
            return;
        }
        socket.write(text[i % text.length]);
        i += 1;
    }, ms);
    socket.on('close', () => clearInterval(timer));
}

const WATCH_CREATED = '{"result":{"header":{"revision":"9"},"created":true}}\n';
const ZEROS = Buffer.alloc(MB);
const XS = Buffer.alloc(MB, 'x');

// 1 GiB of zeros, gzipped (about 1 MB), made on first use
let bomb = null;
function gzipBomb(then) {
    if (bomb) return then(bomb);
    const gz = zlib.createGzip({ level: 9 });
    const out = [];
    gz.on('data', (c) => out.push(c));
    gz.on('end', () => { bomb = Buffer.concat(out); then(bomb); });
    let n = 0;
    const more = () => {
        while (n < 1024) {
            n += 1;
            if (!gz.write(ZEROS)) return gz.once('drain', more);
        }
        gz.end();
    };
    more();
}

/* }============================================================= */

/* {======================= protocol bits ======================== */

const b64 = (s) => Buffer.from(s, 'utf8').toString('base64');
const unb64 = (s) => Buffer.from(s || '', 'base64').toString('latin1');

function selfUrl(req) {
    return `${req.tls ? 'https' : 'http'}://127.0.0.1:${req.port}`;
}

function topology(req, urls) {
    const name = new URL(req.target, 'http://x').searchParams.get('name');
    return { Nodes: urls.map((Url, i) => ({ Url, ClusterTag: String.fromCharCode(65 + i),
                                            ServerRole: 'Member', Database: name })),
             Etag: 1 };
}

// a RavenDB list page: `n` items from key number `from` on, under the
// prefix asked for (startsWith)
function ravenPage(req, from, n) {
    const prefix = new URL(req.target, 'http://x').searchParams.get('startsWith') || '';
    const items = [];
    for (let i = from; i < from + n; i++) {
        const key = prefix + 'item/' + String(i).padStart(9, '0');
        items.push(`{"Key":${JSON.stringify(key)},"Value":{"Object":${i}},"Index":${i + 1}}`);
    }
    return `{"Results":[${items.join(',')}]}`;
}

function param(req, name) {
    return Number(new URL(req.target, 'http://x').searchParams.get(name) || 0);
}

// our own envelope, as etcd.lua stores values
function envelope(key, value) {
    return b64(JSON.stringify({ Key: key, Write: 'w', Object: value }));
}

function etcdKv(key, folded, rev, value64) {
    return `{"key":"${b64(folded)}","create_revision":"${rev}","mod_revision":"${rev}",` +
        `"version":"1","value":${value64 === undefined ? JSON.stringify(envelope(key, 1)) :
            value64}}`;
}

// a reply with one kv of mod_revision `rev` and value `value64` (JSON text),
// of the key a range or a txn (get_many: its first range) asks for; a list
// gets it under its prefix
function etcdKvReply(req, rev, value64) {
    const body = JSON.parse(req.body);
    let key = unb64(body.key || (body.success ? body.success[0].request_range.key : ''));
    if (body.range_end) key = etcdPrefix(req) + 'k';
    const kv = etcdKv('k', key, rev, value64);
    if (req.target === '/v3/kv/txn') {
        const responses = body.success.map((op, i) => `{"response_range":{"kvs":[${i === 0 ? kv
            : etcdKv('k', unb64(op.request_range.key), 5)}]}}`);
        return `{"header":{"revision":"9"},"succeeded":true,"responses":[${responses.join(',')}]}`;
    }
    return `{"header":{"revision":"9"},"kvs":[${kv}],"count":"1"}`;
}

// the prefix an etcd range asks for: range_end is the prefix with its last
// byte one higher (etcd.lua's prefix_end)
function etcdPrefix(req) {
    const end = unb64(JSON.parse(req.body).range_end);
    return end.slice(0, -1) + String.fromCharCode(end.charCodeAt(end.length - 1) - 1);
}

// an etcd range page: `n` kvs from key number `from` on, under the prefix asked for
function etcdPage(req, from, n, more) {
    const base = etcdPrefix(req);
    const kvs = [];
    for (let i = from; i < from + n; i++) {
        const folded = base + 'item/' + String(i).padStart(9, '0');
        kvs.push(etcdKv(folded, folded, 100 + i));
    }
    return `{"header":{"revision":"1000"},"kvs":[${kvs.join(',')}]${more ? ',"more":true' : ''},` +
        `"count":"${from + n + 1}"}`;
}

// the next key number after the one a paging request starts from
function etcdFrom(req) {
    const m = /item\/(\d+)\0$/.exec(unb64(JSON.parse(req.body).key));
    return m ? Number(m[1]) + 1 : 0;
}

const kind = (req) => (req.target.startsWith('/v3/') ? 'etcd' : 'ravendb');

// what a store's open asks: answered as a server would (unless the case is
// "at open")
function opening(req) {
    if (req.method === 'GET' && req.target.startsWith('/topology')) return 'topology';
    if (req.target === '/v3/kv/range' && req.body.includes('count_only')) return 'probe';
    if (req.target === '/v3/auth/authenticate') return 'auth';
    return null;
}

function answerOpening(req, what) {
    if (what === 'topology') return answer(req, 200, topology(req, [selfUrl(req)]));
    if (what === 'probe') return answer(req, 200, '{"header":{"revision":"1"},"count":"0"}');
    return answer(req, 200, '{"header":{"revision":"1"},"token":"tok.1"}');
}

/* }============================================================= */

/* {=========================== cases ============================ */

// each case: (req) -> writes a reply (req.done() when the connection may
// serve another request); `open`: misbehave on the opening requests too;
// `tls`: listen with TLS
const cases = {
    trap: { open: true, reply: (req) => answer(req, 418, '{"trap":true}') },

    // sizes
    huge_length: { reply: (req) => {       // announces 1 GiB and sends it
        req.socket.write(head(200, { 'Content-Length': 1024 * MB }));
        stream(req.socket, 1024 * MB, XS);
    } },
    huge_chunked: { reply: (req) => {      // chunks of 1 MiB, 1.5 GiB in all
        req.socket.write(head(200, { 'Transfer-Encoding': 'chunked' }));
        const chunk = Buffer.concat([Buffer.from('100000\r\n'), XS, Buffer.from('\r\n')]);
        stream(req.socket, 1536 * chunk.length, chunk);
    } },
    huge_close: { reply: (req) => {        // no length: 1.5 GiB, read until the close
        req.socket.write(head(200, { Connection: 'close' }));
        stream(req.socket, 1536 * MB, XS, () => req.socket.end());
    } },
    gzip_bomb: { reply: (req) => gzipBomb((data) => {
        req.socket.write(head(200, { 'Content-Type': 'application/json',
            'Content-Encoding': 'gzip', 'Content-Length': data.length }));
        req.socket.write(data);
        req.done();
    }) },
    header_line: { open: true, reply: (req) => {   // one header line of 512 MiB
        req.socket.write('HTTP/1.1 200 X\r\nX-Long: ');
        stream(req.socket, 512 * MB, XS);
    } },
    header_flood: { open: true, reply: (req) => {  // 512 MiB of short header lines
        req.socket.write('HTTP/1.1 200 X\r\n');
        stream(req.socket, 512 * MB, Buffer.from('X-Flood: 1\r\n'.repeat(65536)));
    } },
    interim_flood: { open: true, reply: (req) => { // 100 Continue, over and over
        stream(req.socket, 512 * MB, Buffer.from('HTTP/1.1 100 Continue\r\n\r\n'.repeat(16384)));
    } },
    chunk_line: { reply: (req) => {        // a chunk-size line that never ends
        req.socket.write(head(200, { 'Transfer-Encoding': 'chunked' }));
        stream(req.socket, 512 * MB, Buffer.alloc(MB, '0'));
    } },
    tiny_chunks: { reply: (req) => {       // 1-byte chunks, 2.5 GiB on the wire
        req.socket.write(head(200, { 'Transfer-Encoding': 'chunked' }));
        stream(req.socket, 2560 * MB, Buffer.from('1\r\nx\r\n'.repeat(174763)));
    } },
    huge_chunk_size: { reply: (req) => {
        req.socket.write(head(200, { 'Transfer-Encoding': 'chunked' }) + 'FFFFFFFFFFFF\r\nxx');
    } },

    // time
    stall: { open: true, reply: () => {} },        // reads the request, never answers
    // an etcd watch (/v3/watch, hostile_watch_spec): the watch is set up, then
    // its stream goes wrong
    watch_long_line: { reply: (req) => {   // an event line of 1.5 GiB
        req.socket.write(head(200, { Connection: 'close' }) + WATCH_CREATED + '{"result":');
        stream(req.socket, 1536 * MB, XS, () => req.socket.end());
    } },
    watch_cut: { reply: (req) => {         // closed in the middle of an event line
        req.socket.end(head(200, { Connection: 'close' }) + WATCH_CREATED
            + '{"result":{"header":{"revision":"9"},"events":[{"kv":{"key":"');
    } },
    watch_trickle: { reply: (req) => {     // set up, then a line that never ends
        req.socket.write(head(200, { Connection: 'close' }) + WATCH_CREATED);
        trickle(req.socket, ' ', 50, 120);
    } },
    watch_stall: { reply: () => {} },      // answers the store's open, then nothing
    watch_progress: { reply: (req) => {    // set up, then progress headers forever, no event
        req.socket.write(head(200, { Connection: 'close' }) + WATCH_CREATED);
        const timer = setInterval(() => {
            if (req.socket.destroyed) return clearInterval(timer);
            req.socket.write('{"result":{"header":{"revision":"9"}}}\n');
        }, 20);
        req.socket.on('close', () => clearInterval(timer));
    } },
    watch_status: { reply: (req) => answer(req, 503,
        '{"error":{"grpc_code":14,"message":"etcdserver: no leader"}}') },

    trickle_headers: { open: true, reply: (req) => {
        req.socket.write('HTTP/1.1 200 X\r\n');
        trickle(req.socket, 'X-Slow: 1\r\n', 50, 120);
    } },
    trickle_body: { reply: (req) => {
        req.socket.write(head(200, { 'Content-Type': 'application/json',
            'Content-Length': 100000 }));
        trickle(req.socket, ' ', 50, 120);
    } },
    trickle_chunked: { reply: (req) => {
        req.socket.write(head(200, { 'Transfer-Encoding': 'chunked' }));
        trickle(req.socket, '1\r\n \r\n', 20, 120);
    } },
    slow_reader: { reading: false, reply: () => {} },  // reads no request body over 1 MiB

    // broken replies
    truncated_length: { reply: (req) => {
        req.socket.end(head(200, { 'Content-Length': 100 }) + '{"Results":[');
    } },
    truncated_chunked: { reply: (req) => {
        req.socket.end(head(200, { 'Transfer-Encoding': 'chunked' }) + '64\r\n{"Results":[');
    } },
    garbage: { reply: (req) => req.socket.end('SSH-2.0-OpenSSH_9.2\r\n\r\n') },
    bad_length: { reply: (req) => {
        req.socket.end(head(200, { 'Content-Length': '-5' }) + '{}');
    } },
    malformed_json: { reply: (req) => answer(req, 200, kind(req) === 'etcd'
        ? '{"header":{"revision":"5"},"succeeded":tru' : '{"Results":[{"Key":"k",') },
    redirect: { reply: (req) => {
        req.socket.write(head(307, { Location: `http://127.0.0.1:${ports.trap}${req.target}`,
            'Content-Length': 0 }));
        req.done();
    } },

    // RavenDB shapes
    rdb_results_object: { reply: (req) => answer(req, 200,
        '{"Results":{"Key":"k","Value":{"Object":1},"Index":5}}') },
    rdb_index_float: { reply: (req) => answer(req, 200,
        '{"Results":[{"Key":"k","Value":{"Object":1},"Index":1.5}]}') },
    rdb_index_string: { reply: (req) => answer(req, 200,
        '{"Results":[{"Key":"k","Value":{"Object":1},"Index":"5"}]}') },
    rdb_index_huge: { reply: (req) => answer(req, 200,
        '{"Results":[{"Key":"k","Value":{"Object":1},"Index":1e300}]}') },
    rdb_index_negative: { reply: (req) => answer(req, 200,
        '{"Results":[{"Key":"k","Value":{"Object":1},"Index":-7}]}') },
    // the first write (a lock's acquire) is answered as a server would, every
    // later one (its renewals) with a gzip bomb; deletes succeed
    rdb_renew_bomb: { reply: (req) => {
        if (req.method === 'DELETE') {
            return answer(req, 200, '{"Index":7,"Successful":true,"Value":{"Object":1}}');
        }
        hits.rdb_renew_writes = (hits.rdb_renew_writes || 0) + 1;
        if (hits.rdb_renew_writes === 1) {
            return answer(req, 200, '{"Index":5,"Successful":true,"Value":null}');
        }
        gzipBomb((data) => {
            req.socket.write(head(200, { 'Content-Type': 'application/json',
                'Content-Encoding': 'gzip', 'Content-Length': data.length }));
            req.socket.write(data);
            req.done();
        });
    } },
    rdb_write_zero: { reply: (req) => answer(req, 200,
        '{"Index":0,"Successful":true,"Value":null}') },
    rdb_write_negative: { reply: (req) => answer(req, 200,
        '{"Index":-5,"Successful":true,"Value":null}') },
    rdb_write_string: { reply: (req) => answer(req, 200,
        '{"Index":"12","Successful":true,"Value":null}') },
    rdb_list_stuck: { reply: (req) => answer(req, 200, ravenPage(req, 0, 1024)) },
    rdb_list_endless: { reply: (req) => answer(req, 200,
        ravenPage(req, param(req, 'start'), param(req, 'pageSize'))) },
    rdb_list_oversize: { reply: (req) => answer(req, 200,
        ravenPage(req, param(req, 'start'), param(req, 'pageSize') + 1)) },

    // foreign topologies
    rdb_topology_http: { tls: true, open: true, reply: (req) => answer(req, 200,
        topology(req, [`http://127.0.0.1:${ports.trap}`])) },
    rdb_topology_mixed: { tls: true, open: true, reply: (req) => {
        if (opening(req)) {
            return answer(req, 200, topology(req, [`http://127.0.0.1:${ports.trap}`,
                selfUrl(req)]));
        }
        return answer(req, 404, '');
    } },
    rdb_topology_crlf: { open: true, reply: (req) => answer(req, 200, topology(req,
        [`http://127.0.0.1:${ports.trap}/x HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /y`])) },
    rdb_topology_userinfo: { open: true, reply: (req) => answer(req, 200, topology(req,
        [`http://evil@127.0.0.1:${ports.trap}`])) },

    // etcd shapes: the kv is of the key asked for, only its value or revision is wrong
    etcd_value_object: { reply: (req) => answer(req, 200, etcdKvReply(req, '5', '{"a":1}')) },
    etcd_value_not_ours: { reply: (req) => answer(req, 200,
        etcdKvReply(req, '5', JSON.stringify(b64('[1,2]')))) },
    etcd_revision_float: { reply: (req) => answer(req, 200, etcdKvReply(req, '1.5')) },
    etcd_revision_negative: { reply: (req) => answer(req, 200, etcdKvReply(req, '-3')) },
    etcd_revision_huge: { reply: (req) => answer(req, 200, etcdKvReply(req, '1e400')) },
    etcd_put_zero: { reply: (req) => answer(req, 200,
        '{"header":{"revision":"0"},"succeeded":true}') },
    etcd_put_negative: { reply: (req) => answer(req, 200,
        '{"header":{"revision":"-9"},"succeeded":true}') },
    etcd_token_crlf: { open: true, reply: (req) => {
        if (opening(req) === 'auth') {
            return answer(req, 200, '{"header":{"revision":"1"},"token":"t\\r\\nX-Injected: 1"}');
        }
        return answerOpening(req, opening(req) || 'probe');
    } },
    etcd_list_stuck: { reply: (req) => answer(req, 200, etcdPage(req, 0, 512, true)) },
    etcd_list_endless: { reply: (req) => answer(req, 200,
        etcdPage(req, etcdFrom(req), Number(JSON.parse(req.body).limit), true)) },
    etcd_list_outside: { reply: (req) => answer(req, 200,
        `{"header":{"revision":"9"},"kvs":[${etcdKv('zzz', 'zzz', 5)}],"count":"1"}`) },
};

/* }============================================================= */

/* {===================== requests on raw sockets ================== */

// reads requests off `socket` one at a time and hands each to the case
function serve(name, socket, port, secure) {
    const c = cases[name];
    let buf = Buffer.alloc(0);
    let busy = false;
    socket.on('error', () => {});
    const pump = () => {
        if (busy) return;
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
        const [method, target] = lines[0].split(' ');
        const headers = {};
        for (const line of lines.slice(1)) {
            const i = line.indexOf(':');
            if (i > 0) headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
        }
        const length = Number(headers['content-length'] || 0);
        const req = { method, target, headers, socket, port, tls: secure, body: '' };
        if (c.reading === false && length > MB) {
            hits[name] = (hits[name] || 0) + 1;
            busy = true;
            socket.pause();         // the client's send fills the buffers and waits
            return;
        }
        if (buf.length < end + 4 + length) return;
        req.body = buf.subarray(end + 4, end + 4 + length).toString('latin1');
        buf = buf.subarray(end + 4 + length);
        hits[name] = (hits[name] || 0) + 1;
        busy = true;
        req.done = () => { busy = false; setImmediate(pump); };
        const what = opening(req);
        if (what && !c.open) return answerOpening(req, what);
        c.reply(req);
    };
    socket.on('data', (d) => { buf = Buffer.concat([buf, d]); pump(); });
}

function listen(name) {
    const c = cases[name];
    return new Promise((resolve) => {
        const secure = Boolean(c.tls);
        if (secure && !certs) return resolve();     // no certificates: no TLS cases
        let server;
        const onSocket = (socket) => serve(name, socket, server.address().port, secure);
        server = secure ? tls.createServer(certs, onSocket) : net.createServer(onSocket);
        server.on('tlsClientError', () => {});
        server.listen(0, '127.0.0.1', () => {
            ports[name] = server.address().port;
            resolve();
        });
    });
}

const control = net.createServer((socket) => {
    socket.on('error', () => {});
    socket.once('data', () => {
        const body = JSON.stringify(hits);
        socket.end(head(200, { 'Content-Type': 'application/json',
            'Content-Length': Buffer.byteLength(body), Connection: 'close' }) + body);
    });
});

Promise.all(Object.keys(cases).map(listen)).then(() => {
    control.listen(0, '127.0.0.1', () => {
        process.stdout.write(JSON.stringify({ pid: process.pid, control: control.address().port,
                                              ports }) + '\n');
    });
});
setTimeout(() => process.exit(0), 3600 * 1000).unref();
process.on('SIGTERM', () => process.exit(0));

/* }============================================================= */
