// An HTTP proxy that loses replies on purpose (Node standard library only),
// for servers with no fault injection of their own (etcd): a request is
// forwarded and applied upstream, then its client connection is destroyed
// instead of answered, so the client cannot know whether it was applied.
//   node fault_proxy.js UPSTREAM_URL
// Prints "PORT PID" on its first line, then serves on 127.0.0.1 until killed
// or until 300 s pass.
//   POST /__faults {"path_contains": "/v3/kv/txn", "count": 1}
//                  -> loses the replies of the next `count` matching requests
//   GET  /__faults -> {"dropped": n, "requests": [paths, in order]}
'use strict';
const http = require('http');

const upstream = new URL(process.argv[2]);
let fault = null;
let dropped = 0;
const requests = [];

const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
        const body = Buffer.concat(chunks);
        if (req.url === '/__faults') {
            if (req.method === 'POST') fault = JSON.parse(body.toString('utf8'));
            res.setHeader('Content-Type', 'application/json');
            res.end(JSON.stringify({ dropped, requests }));
            return;
        }
        requests.push(req.url);
        const lose = fault && fault.count > 0 && req.url.includes(fault.path_contains);
        if (lose) fault.count -= 1;
        const headers = Object.assign({}, req.headers, { host: upstream.host });
        const out = http.request({ host: upstream.hostname, port: upstream.port,
            method: req.method, path: req.url, headers }, (up) => {
            const reply = [];
            up.on('data', (c) => reply.push(c));
            up.on('end', () => {
                if (lose) {             // applied upstream; the client never learns it
                    dropped += 1;
                    req.socket.destroy();
                    return;
                }
                res.writeHead(up.statusCode, up.headers);
                res.end(Buffer.concat(reply));
            });
        });
        out.on('error', () => req.socket.destroy());
        out.end(body);
    });
});

server.listen(0, '127.0.0.1', () => {
    process.stdout.write(`${server.address().port} ${process.pid}\n`);
});
setTimeout(() => process.exit(0), 300 * 1000).unref();
