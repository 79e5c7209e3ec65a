#!/usr/bin/env node
/*
** One client process of the per-operation benchmark through the official RavenDB
** Node.js client (npm `ravendb`, installed in spec/support/ravendb): the phases
** of bench/floor.c, one line per phase: "phase NAME OPS WALL_S CPU_S FAILED",
** CPU being user+sys of this process during the phase (process.cpuUsage). With READY
** and GO: the per-phase barrier of bench/ops.lua.
**   node bench/npm_ops.js URL DATABASE PREFIX N [READY GO]
*/
'use strict';

const fs = require('fs');
const path = require('path');

const ravendb = require(path.join(__dirname, '..', 'spec', 'support', 'ravendb',
    'node_modules', 'ravendb'));

const [url, database, prefix, nText, ready, go] = process.argv.slice(2);
const n = Number(nText);
const VALUE = { n: 42, s: 'bench value', ok: true };
const PHASES = ['put0', 'putcas', 'get', 'delete'];

async function op(ops, phase, key, indexes, i) {
    if (phase === 'put0' || phase === 'putcas') {
        const r = await ops.send(new ravendb.PutCompareExchangeValueOperation(key, VALUE,
            phase === 'put0' ? 0 : indexes[i]));
        indexes[i] = r.index;
        return r.successful;
    }
    if (phase === 'get') {
        const r = await ops.send(new ravendb.GetCompareExchangeValueOperation(key));
        return Boolean(r) && r.index === indexes[i];
    }
    const r = await ops.send(new ravendb.DeleteCompareExchangeValueOperation(key, indexes[i]));
    return Boolean(r && r.successful);
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function main() {
    const store = new ravendb.DocumentStore([url], database);
    store.initialize();
    const ops = store.operations;
    const warm = [];
    for (let i = 1; i <= 20; i += 1) {
        for (const phase of PHASES) await op(ops, phase, `${prefix}warm${i}`, warm, i);
    }
    if (ready) {
        fs.writeFileSync(ready, '');
        while (!fs.existsSync(go)) await sleep(2);
    }
    // a barrier before each phase: GO.PHASE.I for each of $BENCH_PROCS processes
    const me = ready ? ready.match(/(\d+)$/)[1] : null;
    const procs = Number(process.env.BENCH_PROCS || 1);
    const indexes = [];
    for (const phase of PHASES) {
        if (ready) {
            fs.writeFileSync(`${go}.${phase}.${me}`, '');
            for (let i = 1; i <= procs; i += 1) {
                while (!fs.existsSync(`${go}.${phase}.${i}`)) await sleep(1);
            }
        }
        const t0 = process.hrtime.bigint();
        const c0 = process.cpuUsage();
        let failed = 0;
        for (let i = 1; i <= n; i += 1) {
            if (!await op(ops, phase, `${prefix}${i}`, indexes, i)) failed += 1;
        }
        const wall = Number(process.hrtime.bigint() - t0) / 1e9;
        const c = process.cpuUsage(c0);
        process.stdout.write(`phase ${phase} ${n} ${wall.toFixed(6)} ` +
            `${((c.user + c.system) / 1e6).toFixed(6)} ${failed}\n`);
    }
    store.dispose();
}

main().then(() => process.exit(0), (e) => {
    process.stderr.write(`npm_ops: ${e.stack || e}\n`);
    process.exit(1);
});
