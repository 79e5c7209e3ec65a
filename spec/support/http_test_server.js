// A small HTTP server for the transport specs (Node standard library only).
// Prints "PORT PID" on its first line, then serves on 127.0.0.1 until killed
// or until 120 s pass.
//   /echo            -> JSON {method, url, headers, body, remotePort}
//   /status/NNN      -> that status, body "status NNN"
//   /slow?ms=N       -> answers after N ms
//   /gzip            -> a gzip-encoded JSON body when the client accepts gzip
//   /drop            -> destroys the socket without answering
//   /big?bytes=N     -> N bytes of "x", chunked
//   /bigheaders?kb=N -> a small body after N headers of 1 KB each
//   /dropcount?id=X  -> counts the request under X, then destroys the socket
//   /count?id=X      -> how many requests /dropcount counted under X
//   /hang/...        -> never answers (the connection stays open)
//   /lines?n=N&len=L -> N lines of L bytes of "x" (each ending in CRLF), in one write
//   /vanish          -> stops listening and destroys the socket without answering,
//                       as a server killed after reading the request (then exits)
'use strict';
const http = require('http');
const zlib = require('zlib');

const counts = {};

const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
        const url = new URL(req.url, 'http://127.0.0.1');
        const body = Buffer.concat(chunks).toString('utf8');
        if (url.pathname === '/echo') {
            res.setHeader('Content-Type', 'application/json');
            res.setHeader('X-Multi', 'one');
            res.end(JSON.stringify({ method: req.method, url: req.url, headers: req.headers,
                body, remotePort: req.socket.remotePort }));
        } else if (url.pathname.startsWith('/status/')) {
            const status = Number(url.pathname.slice(8));
            res.writeHead(status, { 'Content-Type': 'text/plain' });
            res.end('status ' + status);
        } else if (url.pathname === '/slow') {
            setTimeout(() => res.end('slow'), Number(url.searchParams.get('ms')));
        } else if (url.pathname === '/gzip') {
            const payload = JSON.stringify({ compressed: true, filler: 'z'.repeat(1000) });
            if (/gzip/.test(req.headers['accept-encoding'] || '')) {
                res.setHeader('Content-Encoding', 'gzip');
                res.end(zlib.gzipSync(payload));
            } else {
                res.end(payload);
            }
        } else if (url.pathname === '/bigheaders') {
            const n = Number(url.searchParams.get('kb'));
            for (let i = 0; i < n; i++) res.setHeader('X-Filler-' + i, 'f'.repeat(1024));
            res.end('{}');
        } else if (url.pathname === '/lines') {
            const line = 'x'.repeat(Number(url.searchParams.get('len'))) + '\r\n';
            res.end(line.repeat(Number(url.searchParams.get('n'))));
        } else if (url.pathname === '/drop') {
            req.socket.destroy();
        } else if (url.pathname === '/dropcount') {
            const id = url.searchParams.get('id');
            counts[id] = (counts[id] || 0) + 1;
            req.socket.destroy();
        } else if (url.pathname.startsWith('/hang/')) {
            // no answer, ever: the client's timeout must end the request
        } else if (url.pathname === '/count') {
            res.end(String(counts[url.searchParams.get('id')] || 0));
        } else if (url.pathname === '/vanish') {
            server.close();
            req.socket.destroy();
        } else if (url.pathname === '/big') {
            const n = Number(url.searchParams.get('bytes'));
            const piece = Buffer.alloc(65536, 'x');
            let left = n;
            const more = () => {
                while (left > 0) {
                    const k = Math.min(left, piece.length);
                    left -= k;
                    if (!res.write(piece.subarray(0, k))) return res.once('drain', more);
                }
                res.end();
            };
            more();
        } else {
            res.writeHead(404);
            res.end();
        }
    });
});

server.listen(0, '127.0.0.1', () => {
    process.stdout.write(server.address().port + ' ' + process.pid + '\n');
});
setTimeout(() => process.exit(0), 120000).unref();
process.on('SIGTERM', () => process.exit(0));
