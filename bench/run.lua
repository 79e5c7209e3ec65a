--- `make bench`: every comparison of issues 8, 18 (transactions) and 19
-- (fairness, election), measured in one run, against servers this script
-- starts on 127.0.0.1 in its own temporary directories (the RavenDB emulator,
-- a 3-member etcd cluster, an nginx) and stops at the end. Prints one table,
-- writes bench/results/bench.csv and bench.png.
--   lua5.4 bench/run.lua [--quick] [--only 1,2,3,4,5,6,7,8,9,10] [--out DIR]
-- --quick: a few operations of everything (the smoke run of make test); it
-- checks that the benchmark works, its figures mean nothing.
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

local core = require "cmpxchg.core"
local json = require "cmpxchg.json"

local LUA = arg[-1] or "lua5.4"
local opts = { out = "bench/results", only = nil, quick = false }
do
    local i = 1
    while arg[i] do
        if arg[i] == "--quick" then opts.quick = true
        elseif arg[i] == "--only" then
            opts.only = {}
            -- "10" is section 10; otherwise each digit is a section ("789")
            for n in arg[i + 1]:gmatch("1?%d") do
                if n == "1" or n == "10" or #n == 1 then opts.only[tonumber(n)] = true
                else opts.only[1], opts.only[tonumber(n:sub(2))] = true, true end
            end
            i = i + 1
        elseif arg[i] == "--out" then opts.out = arg[i + 1]; i = i + 1
        else error("unknown argument " .. arg[i]) end
        i = i + 1
    end
end
local function wanted(n) return opts.only == nil or opts.only[n] end

-- sizes: operations per phase and process, seconds per lock run
local Q = opts.quick
local SIZE = {
    ravendb = Q and 20 or 3000, ravendb4 = Q and 10 or 1000,
    etcd = Q and 20 or 1000, etcd4 = Q and 10 or 400,
    embedded = Q and 50 or 100000, embedded4 = Q and 20 or 25000,
    lock_seconds = Q and 0.5 or 4, hold = 0.002, gap = 0.004,
    mem_embedded = Q and 2000 or 1000000, mem_http = Q and 200 or 100000,
    vg_embedded = Q and 200 or 3000, vg_http = Q and 20 or 300,
    fair_seconds = Q and 1.5 or 6, election_ttl = Q and 1 or 3, election_kills = Q and 1 or 3,
}
local LOCK_PROCS = Q and { 2 } or { 2, 4, 8 }
local ROUNDS = Q and 1 or 3     -- runs of each per-operation case, reported by their median

--[[ Processes and files ]]

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function sh(cmd)
    local p = assert(io.popen(cmd .. " 2>&1"))
    local out = p:read("a")
    local ok, _, code = p:close()
    if not ok then error(("command failed (%s): %s\n%s"):format(tostring(code), cmd, out), 2) end
    return (out:gsub("%s+$", ""))
end

local function exists(path)
    local f = io.open(path, "r")
    if f then f:close() end
    return f ~= nil
end

local function write_file(path, text)
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
end

local tmp = sh("mktemp -d /tmp/cmpxchg-bench.XXXXXX")
local runs = 0

--- Starts `cmds` together (each one gets READY GO arguments appended when
-- `barrier`), releases them at once when all are ready, and returns their
-- outputs (raising when one failed).
local function run_together(cmds, barrier, timeout)
    runs = runs + 1
    local dir = ("%s/run%d"):format(tmp, runs)
    sh("mkdir -p " .. dir)
    local go = dir .. "/go"
    local procs = {}
    for i, cmd in ipairs(cmds) do
        local ready = ("%s/ready%d"):format(dir, i)
        local full = barrier == "flags"
            and ("%s --ready %s --go %s"):format(cmd, quote(ready), quote(go))
            or barrier and ("%s %s %s"):format(cmd, quote(ready), quote(go)) or cmd
        procs[i] = { cmd = full, ready = ready,
                     pipe = assert(io.popen(("BENCH_PROCS=%d timeout %d %s 2>%s/err%d")
                         :format(#cmds, timeout or 300, full, dir, i), "r")) }
    end
    if barrier then
        local deadline = core.monotime() + 60
        for _, p in ipairs(procs) do
            while not exists(p.ready) do
                if core.monotime() > deadline then error("a process never got ready: " .. p.cmd) end
                core.sleep(0.005)
            end
        end
        write_file(go, "")
    end
    local outs = {}
    for i, p in ipairs(procs) do
        outs[i] = p.pipe:read("a")
        local ok = p.pipe:close()
        if not ok then
            local ef = io.open(("%s/err%d"):format(dir, i))
            local err = ef and ef:read("a") or ""
            if ef then ef:close() end
            error(("failed: %s\n%s%s"):format(p.cmd, outs[i], err))
        end
    end
    return outs, dir
end

--[[ Servers ]]

local servers = {}

local function stop_servers()
    for _, n in pairs(servers.nginx or {}) do
        os.execute(("kill -QUIT %d 2>/dev/null"):format(n.pid))
        for _ = 1, 100 do
            if not exists(n.prefix .. "/logs/nginx.pid") then break end
            core.sleep(0.05)
        end
        os.execute(("kill -KILL %d 2>/dev/null"):format(n.pid))
    end
    if servers.ravendb then
        os.execute(("RAVENDB_EMULATOR_DIR=%s scripts/ravendb-emulator stop >/dev/null 2>&1")
            :format(quote(servers.ravendb.dir)))
    end
    if servers.etcd then
        os.execute(("ETCD_CLUSTER_DIR=%s scripts/etcd-cluster stop >/dev/null 2>&1")
            :format(quote(servers.etcd.dir)))
    end
end

local function ravendb()
    if servers.ravendb then return servers.ravendb end
    local dir = tmp .. "/ravendb"
    local env = "RAVENDB_EMULATOR_DIR=" .. quote(dir) .. " "
    sh(env .. "scripts/ravendb-emulator start --nodes 1")
    local url = sh(env .. "scripts/ravendb-emulator url")
    servers.ravendb = { dir = dir, url = url }
    local h = core.http_new()
    local status, body = h:request("PUT", url .. "/admin/databases?name=bench&replicationFactor=1",
        json.encode({ DatabaseName = "bench", Settings = {}, Disabled = false, Encrypted = false,
                      Topology = { DynamicNodesDistribution = false } }),
        { ["Content-Type"] = "application/json" }, 30)
    assert(status == 200 or status == 201, "cannot create the database: " .. tostring(body))
    h:close()
    return servers.ravendb
end

local function etcd()
    if servers.etcd then return servers.etcd end
    local dir = tmp .. "/etcd"
    local env = "ETCD_CLUSTER_DIR=" .. quote(dir) .. " "
    servers.etcd = { dir = dir }
    sh(env .. "scripts/etcd-cluster start")
    local leader = sh(env .. "scripts/etcd-cluster leader")
    servers.etcd.url = sh(env .. "scripts/etcd-cluster endpoint " .. leader)
    servers.etcd.all = {}
    for u in sh(env .. "scripts/etcd-cluster endpoints"):gmatch("[^,%s]+") do
        servers.etcd.all[#servers.etcd.all + 1] = u
    end
    return servers.etcd
end

--- gRPC messages the etcd cluster received, over all members (/metrics): what
-- a client's requests cost the cluster, whatever the client (gateway or gRPC).
local function etcd_messages()
    local h = core.http_new()
    local total = 0
    for _, u in ipairs(servers.etcd.all) do
        local status, body = h:request("GET", u .. "/metrics", nil, nil, 10)
        assert(status == 200, "etcd /metrics")
        for n in body:gmatch("\ngrpc_server_msg_received_total{[^}]*} (%S+)") do
            total = total + tonumber(n)
        end
    end
    h:close()
    return total
end

--- The nginx of `conf` (bench/nginx/CONF: nginx.conf, section 4's, or
-- locks.conf, section 10's), started on first use on a free port.
local function nginx(conf)
    conf = conf or "nginx.conf"
    servers.nginx = servers.nginx or {}
    if servers.nginx[conf] then return servers.nginx[conf] end
    local prefix = ("%s/nginx-%s"):format(tmp, conf:gsub("%.conf$", ""))
    sh(("mkdir -p %s/logs %s/tmp"):format(prefix, prefix))
    local port = sh([[node -e "const s=require('net').createServer().listen(0,'127.0.0.1',
        ()=>{console.log(s.address().port);s.close()})"]])
    local root = sh("pwd")
    local text = assert(io.open("bench/nginx/" .. conf)):read("a"):gsub("__PORT__", port)
        :gsub("__ROOT__", (root:gsub("%%", "%%%%")))
    write_file(prefix .. "/" .. conf, text)
    local pid = sh(("nginx -p %s -c %s >%s/logs/stdout.log 2>&1 </dev/null & echo $!")
        :format(quote(prefix), conf, quote(prefix)))
    local n = { prefix = prefix, pid = tonumber(pid), url = "http://127.0.0.1:" .. port }
    servers.nginx[conf] = n
    local h = core.http_new()
    for _ = 1, 100 do
        if h:request("GET", n.url .. "/ready", nil, nil, 1) == 204 then
            h:close()
            return n
        end
        core.sleep(0.05)
    end
    error("nginx did not start: " .. sh("cat " .. quote(prefix) .. "/logs/*.log"))
end

--[[ Statistics ]]

local function percentile(sorted, p)
    if #sorted == 0 then return nil end
    return sorted[math.max(1, math.ceil(#sorted * p))]
end

--- Sums the phase lines of one run: per phase {ops, ops_s, cpu_us}.
local function phases(outs)
    local acc = {}
    for _, out in ipairs(outs) do
        for name, ops, wall, cpu, failed in out:gmatch("phase (%S+) (%d+) (%S+) (%S+) (%d+)") do
            local a = acc[name] or { ops = 0, wall = 0, cpu = 0, failed = 0 }
            acc[name] = a
            a.ops = a.ops + tonumber(ops)
            a.wall = math.max(a.wall, tonumber(wall))
            a.cpu = a.cpu + tonumber(cpu)
            a.failed = a.failed + tonumber(failed)
        end
    end
    for name, a in pairs(acc) do
        if a.failed > 0 then error(("%d failed operations in phase %s"):format(a.failed, name)) end
        a.ops_s = a.ops / a.wall
        a.cpu_us = a.cpu / a.ops * 1e6
    end
    return acc
end

--- Lock statistics from sections {proc, req, acq, rel}: acquisitions per
-- second, hand-off latencies (release by one holder -> acquisition by another
-- that was already waiting before that holder acquired), overlaps.
local function lock_stats(sections, requests)
    table.sort(sections, function(a, b) return a.acq < b.acq end)
    local handoffs, overlaps, worst = {}, 0, 0
    for i = 2, #sections do
        local prev, cur = sections[i - 1], sections[i]
        if cur.acq < prev.rel - 1e-4 then
            overlaps = overlaps + 1
            worst = math.max(worst, prev.rel - cur.acq)
        end
        if cur.proc ~= prev.proc and cur.req < prev.acq then
            handoffs[#handoffs + 1] = cur.acq - prev.rel
        end
    end
    table.sort(handoffs)
    local span = #sections > 1 and (sections[#sections].rel - sections[1].acq) or 0
    local waiting = 0       -- seconds spent waiting, summed over the contenders
    for _, sec in ipairs(sections) do waiting = waiting + (sec.acq - sec.req) end
    return {
        acquisitions = #sections,
        acq_s = span > 0 and #sections / span or 0,
        p50 = percentile(handoffs, 0.5), p99 = percentile(handoffs, 0.99),
        handoffs = #handoffs, overlaps = overlaps, worst_overlap = worst,
        req_acq = requests and #sections > 0 and requests / #sections or nil,
        req_waiting = requests and waiting > 0 and requests / waiting or nil,
    }
end

local function parse_rounds(out, proc, sections)
    local requests
    for line in out:gmatch("[^\n]+") do
        local r, a, l = line:match("^(%d+%.%d+) (%d+%.%d+) (%d+%.%d+)$")
        if r then
            sections[#sections + 1] = { proc = proc, req = tonumber(r), acq = tonumber(a),
                                        rel = tonumber(l) }
        else
            local n = line:match("^requests (%d+)")
            if n then requests = tonumber(n) end
        end
    end
    return requests
end

--[[ The table ]]

local rows = {}

local function row(r)
    rows[#rows + 1] = r
    return r
end

local function fmt(v, f)
    if v == nil then return "-" end
    return (f or "%.1f"):format(v)
end

--- "0.23 (<= 0.25 met)" for the ratio column
local function verdict(ratio, limit, less)
    if ratio == nil then return "-", nil end
    local met
    if less == false then met = ratio >= limit else met = ratio <= limit end
    return ("%.2f"):format(ratio), met
end

--- A ratio reported without a target
local function add_note(r, what, ratio)
    r.ratios = r.ratios or {}
    r.ratios[#r.ratios + 1] = ("%s %.2f"):format(what, ratio)
end

local function add_ratio(r, what, ratio, limit, cmp)
    local text, met = verdict(ratio, limit)
    r.ratios = r.ratios or {}
    r.ratios[#r.ratios + 1] = ("%s %s (target %s %s: %s)"):format(what, text, cmp or "<=",
        tostring(limit), met and "met" or "MISSED")
    r.met = (r.met ~= false) and met
end

--[[ 1-3: cost per operation ]]

--- The median of each phase's ops/s and CPU/op over rounds of `phases`.
local function medians(rounds)
    local out = {}
    for name in pairs(rounds[1]) do
        local m = {}
        for _, field in ipairs({ "ops_s", "cpu_us" }) do
            local v = {}
            for i, r in ipairs(rounds) do v[i] = r[name][field] end
            table.sort(v)
            m[field] = v[(#v + 1) // 2]
        end
        out[name] = m
    end
    return out
end

--- Each implementation's phases with 1, 4... processes: ROUNDS runs taking
-- turns (so that a drift of the machine or the server touches them all
-- alike), reported by their medians.
local function ops_section(section, label, impls, procs_list, n_of)
    for _, procs in ipairs(procs_list) do
        local rounds = {}
        for round = 1, ROUNDS do
            for _, impl in ipairs(impls) do
                local cmds = {}
                for p = 1, procs do
                    cmds[p] = impl.cmd(("%s%d.%d/"):format(impl.prefix, round, p), n_of(procs))
                end
                local outs, dir = run_together(cmds, true)
                local ok, acc = pcall(phases, outs)
                if not ok then      -- which implementation, and what its processes said
                    error(("%s: %s\n%s"):format(impl.name, acc,
                        sh("cat " .. dir .. "/err* 2>/dev/null | head -n 20")), 0)
                end
                rounds[impl.name] = rounds[impl.name] or {}
                rounds[impl.name][round] = acc
            end
        end
        local results = {}
        for name, r in pairs(rounds) do results[name] = medians(r) end
        for _, phase in ipairs({ "put0", "putcas", "get", "delete" }) do
            for _, impl in ipairs(impls) do
                local a = results[impl.name][phase]
                local r = row({ section = section, case = ("%s %s x%d"):format(label, phase, procs),
                    impl = impl.name, ops_s = a.ops_s, cpu_us = a.cpu_us, group = label,
                    phase = phase, procs = procs })
                if impl.ratios then impl.ratios(r, results, phase) end
            end
        end
    end
end

--- The Lua floor (bench/bare.lua): floor.c's requests from a bare Lua loop
-- over the library's C transport; what running in Lua costs before the library.
local LUA_FLOOR = "Lua floor (bare loop)"
local function lua_floor(target)
    return { name = LUA_FLOOR, prefix = "l", cmd = function(prefix, n)
        return ("%s bench/ops.lua --bare %s bench %s %d"):format(LUA, target, prefix, n) end }
end

local function section_ravendb()
    local url = ravendb().url
    local impls = {
        { name = "cmpxchg (Lua 5.4)", prefix = "o", cmd = function(prefix, n)
            return ("%s bench/ops.lua %s bench %s %d"):format(LUA, url, prefix, n) end,
          ratios = function(r, res, phase)
            local ours = res["cmpxchg (Lua 5.4)"][phase].cpu_us
            add_ratio(r, "CPU/op vs npm", ours / res["npm ravendb"][phase].cpu_us, 0.25)
            add_ratio(r, "CPU/op vs floor", ours / res["libcurl floor"][phase].cpu_us, 1.10)
            add_note(r, "vs Lua floor", ours / res[LUA_FLOOR][phase].cpu_us)
          end },
        { name = "npm ravendb", prefix = "n", cmd = function(prefix, n)
            return ("node bench/npm_ops.js %s bench %s %d"):format(url, prefix, n) end },
        lua_floor(url),
        { name = "libcurl floor", prefix = "f", cmd = function(prefix, n)
            return ("build/bench/floor ravendb %s bench %s %d"):format(url, prefix, n) end },
    }
    ops_section("1 RavenDB", "ravendb", impls, { 1, 4 },
        function(p) return p == 1 and SIZE.ravendb or SIZE.ravendb4 end)
end

local function section_etcd()
    local e = etcd()
    local impls = {
        { name = "cmpxchg (Lua 5.4)", prefix = "o", cmd = function(prefix, n)
            return ("%s bench/ops.lua %s bench %s %d"):format(LUA, e.url:gsub("^http", "etcd"),
                prefix, n) end,
          ratios = function(r, res, phase)
            local ours = res["cmpxchg (Lua 5.4)"][phase].cpu_us
            add_ratio(r, "CPU/op vs floor", ours / res["libcurl floor"][phase].cpu_us, 1.10)
            add_note(r, "vs Lua floor", ours / res[LUA_FLOOR][phase].cpu_us)
          end },
        lua_floor(e.url:gsub("^http", "etcd")),
        { name = "libcurl floor", prefix = "bench/f", cmd = function(prefix, n)
            return ("build/bench/floor etcd %s %s %d"):format(e.url, prefix, n) end },
    }
    ops_section("2 etcd (3 members)", "etcd", impls, { 1, 4 },
        function(p) return p == 1 and SIZE.etcd or SIZE.etcd4 end)
end

local function section_embedded()
    local files = 0
    local function fresh()
        files = files + 1
        return ("%s/embedded%d.db"):format(tmp, files)
    end
    local current = {}
    local impls = {
        { name = "cmpxchg (Lua 5.4)", prefix = "o", cmd = function(prefix, n)
            if prefix:match("%.1/$") then current.ours = fresh() end   -- a run's first process
            return ("%s bench/ops.lua %s - %s %d"):format(LUA, current.ours, prefix, n) end,
          ratios = function(r, res, phase)
            local ours, floor = res["cmpxchg (Lua 5.4)"][phase], res["SQLite floor"][phase]
            add_ratio(r, "floor ops/s / ours", floor.ops_s / ours.ops_s, 1.5)
            r.cpu_ratio = ours.cpu_us / floor.cpu_us
          end },
        { name = "SQLite floor", prefix = "f", cmd = function(prefix, n)
            if prefix:match("%.1/$") then current.floor = fresh() end
            return ("build/bench/floor sqlite %s %s %d"):format(current.floor, prefix, n) end },
    }
    ops_section("3 embedded", "embedded", impls, { 1, 4 },
        function(p) return p == 1 and SIZE.embedded or SIZE.embedded4 end)
end

--[[ 4: locks under contention ]]

local function lock_run(name, procs)
    local key = ("bench-lock-%d-%d"):format(runs, procs)
    local d, hold, gap = SIZE.lock_seconds, SIZE.hold, SIZE.gap
    local sections, requests = {}, 0
    local function ours(target, database, env)
        local cmds = {}
        for p = 1, procs do
            cmds[p] = ("%s%s bench/lock_worker.lua %s %s %s %s %s %s"):format(env or "", LUA,
                quote(target), database, key, d, hold, gap)
        end
        for p, out in ipairs(run_together(cmds, true)) do
            requests = requests + (parse_rounds(out, p, sections) or 0)
        end
    end
    if name == "embedded" then
        ours(("%s/locks.db"):format(tmp), "-")
    elseif name == "ravendb" then
        ours(ravendb().url, "bench")
    elseif name == "etcd" or name == "etcd_poll" or name == "etcdctl" then
        etcd()
        local before = etcd_messages()
        if name == "etcd" then
            ours(etcd().url:gsub("^http", "etcd"), "bench")
        elseif name == "etcd_poll" then
            ours(etcd().url:gsub("^http", "etcd"), "bench", "env BENCH_WATCH=0 ")
        else
            local cmds = {}
            for p = 1, procs do
                cmds[p] = ("env BENCH_HOLD_BIN=build/bench/hold %s bench/lock_worker.lua"
                    .. " etcdctl %s %s %s %s %s")
                    :format(LUA, etcd().url, key, d, hold, gap)
            end
            for p, out in ipairs(run_together(cmds, true)) do parse_rounds(out, p, sections) end
        end
        requests = etcd_messages() - before
    elseif name == "seed" then
        local url = ravendb().url
        local cmds = {}
        for p = 1, procs do
            cmds[p] = ("node spec/support/ravendb/seed_locks.js --urls %s --database bench --key %s"
                .. " --lease 10 --hold %s --gap %s --rounds 1000000 --duration %s"):format(url, key,
                hold, gap, d)
        end
        for p, out in ipairs(run_together(cmds, "flags")) do
            local doc = assert(json.decode(out:match("({[^\n]*})%s*$") or ""), out)
            requests = requests + 1
            for _, s in ipairs(doc.sections) do
                sections[#sections + 1] = { proc = p, req = s.requested, acq = s.start,
                                            rel = s["end"] }
                requests = requests + s.attempts + (s.takeover and 1 or 0) + 1
            end
        end
    elseif name == "nginx" then
        if os.execute("command -v nginx >/dev/null"
                .. " && test -f /usr/lib/nginx/modules/ngx_http_lua_module.so")
                ~= true then
            return nil      -- scripts/install-deps --bench installs it
        end
        local url = ("%s/contend?key=%s&dur=%s&hold=%s&gap=%s"):format(nginx().url, key, d,
            hold, gap)
        local cmds = {}
        for p = 1, procs do cmds[p] = "curl -sS --max-time 60 " .. quote(url) end
        for p, out in ipairs(run_together(cmds, false)) do
            requests = requests + (parse_rounds(out, p, sections) or 0)
        end
    end
    return lock_stats(sections, requests)
end

--- lock_run's result for `name` and `procs`, measured once per bench run:
-- section 9 takes section 4's runs at the contention levels both measure
-- (the same workers, key, duration, hold and pause), which keeps make bench
-- within its time.
local lock_results = {}
local function lock_result(name, procs)
    local k = name .. ":" .. procs
    if lock_results[k] == nil then lock_results[k] = lock_run(name, procs) or false end
    return lock_results[k] or nil
end

local LOCK_IMPLS = {
    { id = "embedded", name = "cmpxchg embedded" },
    { id = "ravendb", name = "cmpxchg RavenDB (emulator)" },
    { id = "seed", name = "seed fixed-sleep (npm, emulator)" },
    { id = "etcd", name = "cmpxchg etcd" },
    { id = "etcdctl", name = "etcdctl lock (same cluster)" },
    { id = "nginx", name = "nginx shared dict (resty-lock style)" },
}

local function section_locks()
    for _, procs in ipairs(LOCK_PROCS) do
        local stats = {}
        for _, impl in ipairs(LOCK_IMPLS) do
            local s = lock_result(impl.id, procs)
                or { acquisitions = 0, overlaps = 0, skipped = true }
            stats[impl.id] = s
            local r = row({ section = "4 locks", case = ("lock x%d"):format(procs),
                impl = impl.name,
                ops_s = s.acq_s, p50 = s.p50 and s.p50 * 1e3, p99 = s.p99 and s.p99 * 1e3,
                req_acq = s.req_acq, group = "lock", phase = impl.id, procs = procs,
                handoffs = s.handoffs, overlaps = s.overlaps })
            if s.overlaps > 0 then
                r.note = ("%d overlaps! (at most %.2f ms, on the clocks of the processes' logs)")
                    :format(s.overlaps, s.worst_overlap * 1e3)
            end
            if s.skipped then r.note = "skipped: nginx with its lua module is not installed" end
            if impl.id == "embedded" and procs == 8 and s.p50 then
                add_ratio(r, "hand-off p50 ms", s.p50 * 1e3, 5, "<")
            end
            if impl.id == "etcdctl" and stats.etcd.p50 and s.p50 then
                local ours = rows[#rows - 1]
                add_ratio(ours, "p50 vs etcdctl", stats.etcd.p50 / s.p50, 2)
            end
        end
    end
end

--[[ 6: transactions (issue 18): N writes as one transaction against N
sequential puts, on every backend, per write ]]

local TXN_SIZES = Q and { 10 } or { 10, 100 }

local function section_transactions()
    local targets = {
        { "embedded", function() return tmp .. "/txn.db", "-" end, Q and 2 or 2000 },
        { "ravendb", function() return ravendb().url, "bench" end, Q and 2 or 300 },
        { "etcd", function() return etcd().url:gsub("^http", "etcd"), "bench" end, Q and 2 or 300 },
    }
    for _, t in ipairs(targets) do
        local name, where, writes = t[1], t[2], t[3]
        for _, n in ipairs(TXN_SIZES) do
            local target, database = where()
            local rounds = math.max(1, writes // n)
            local results = {}
            for round = 1, ROUNDS do
                local outs = run_together({ ("%s bench/txn.lua %s %s txn%d.%d.%d/ %d %d")
                    :format(LUA, quote(target), database, runs + 1, n, round, n, rounds) }, false)
                local acc = phases(outs)
                results[round] = acc
            end
            local m = medians(results)
            local txn, puts = m.txn, m.puts
            local r = row({ section = "6 transactions", case = ("%s %d writes"):format(name, n),
                impl = ("one transaction of %d"):format(n), ops_s = txn.ops_s,
                cpu_us = txn.cpu_us, group = "txn", phase = name, procs = n })
            add_note(r, ("writes/s vs %d puts"):format(n), txn.ops_s / puts.ops_s)
            add_note(r, "CPU/write vs puts", txn.cpu_us / puts.cpu_us)
            row({ section = "6 transactions", case = ("%s %d writes"):format(name, n),
                impl = ("%d sequential puts"):format(n), ops_s = puts.ops_s, cpu_us = puts.cpu_us,
                group = "txn", phase = name, procs = n })
        end
    end
end

--[[ 7: fairness ]]

local FAIR_PROCS = Q and { 3 } or { 8, 32 }
local RECIPE_BACKENDS = { "embedded", "ravendb", "etcd" }

--- The target and database argument of a worker on `backend`.
local function bench_target(backend, file)
    if backend == "embedded" then return ("%s/%s.db"):format(tmp, file), "-" end
    if backend == "ravendb" then return ravendb().url, "bench" end
    return (etcd().url:gsub("^http", "etcd")), "bench"
end

--- `procs` contenders take one lock in turn for SIZE.fair_seconds (hold 2 ms, pause
-- 0-4 ms, as section 4), with or without fair = true: each wait (request to
-- acquisition), every process's first one left out (they all start at once:
-- the last of 32 to queue waits behind 31 hand-offs by any order, which is the
-- queue filling, not unfairness).
local function fairness_run(backend, procs, fair)
    local key = ("bench-fair-%d-%d"):format(runs, procs)
    local target, database = bench_target(backend, "fair" .. runs)
    local cmds = {}
    for p = 1, procs do
        cmds[p] = ("%s%s bench/lock_worker.lua %s %s %s %s %s %s"):format(
            fair and "env BENCH_FAIR=1 " or "", LUA, quote(target), database, key,
            SIZE.fair_seconds, SIZE.hold, SIZE.gap)
    end
    local waits, acquisitions, first, last = {}, 0, math.huge, -math.huge
    for p, out in ipairs(run_together(cmds, true, 600)) do
        local sections = {}
        parse_rounds(out, p, sections)
        acquisitions = acquisitions + #sections
        for i, sec in ipairs(sections) do
            if i > 1 then waits[#waits + 1] = sec.acq - sec.req end
            first, last = math.min(first, sec.acq), math.max(last, sec.rel)
        end
    end
    table.sort(waits)
    local sum = 0
    for _, w in ipairs(waits) do sum = sum + w end
    return { n = #waits, mean = #waits > 0 and sum / #waits or nil, max = waits[#waits],
             p50 = percentile(waits, 0.5), p99 = percentile(waits, 0.99),
             acq_s = last > first and acquisitions / (last - first) or 0 }
end

local function section_fairness()
    for _, backend in ipairs(RECIPE_BACKENDS) do
        for _, procs in ipairs(FAIR_PROCS) do
            for _, fair in ipairs({ true, false }) do
                local f = fairness_run(backend, procs, fair)
                local r = row({ section = "7 fairness", case = ("%s x%d"):format(backend, procs),
                    impl = fair and "cmpxchg, fair = true" or "cmpxchg, default (jittered backoff)",
                    ops_s = f.acq_s, p50 = f.p50 and f.p50 * 1e3, p99 = f.p99 and f.p99 * 1e3,
                    group = "fairness", phase = backend, procs = procs })
                r.note = f.mean and ("%d waits: mean %.0f ms, longest %.0f ms"):format(f.n,
                    f.mean * 1e3, f.max * 1e3) or "no wait measured"
                if f.mean and f.mean > 0 then
                    if fair then
                        add_ratio(r, "longest/mean wait", f.max / f.mean, 2)
                    else
                        add_note(r, "longest/mean wait", f.max / f.mean)
                    end
                end
            end
        end
    end
end

--[[ 8: leader election failover ]]

--- The "elected WALL TOKEN PID" lines of an election log.
local function elected_lines(log)
    local out = {}
    local f = io.open(log)
    if not f then return out end
    for line in f:lines() do
        local wall, token, pid = line:match("^elected (%S+) (%d+) (%d+)$")
        if wall then out[#out + 1] = { at = tonumber(wall), token = tonumber(token),
                                      pid = tonumber(pid) } end
    end
    f:close()
    return out
end

--- Three candidates (bench/election_worker.lua) campaign with a ttl of
-- SIZE.election_ttl; the leader is SIGKILLed at a random point of its renewal
-- cycle, SIZE.election_kills times (a new candidate joins after each kill):
-- the time from each SIGKILL to the next leader's on_elected.
local function election_run(backend)
    local ttl = SIZE.election_ttl
    local target, database = bench_target(backend, "election" .. runs)
    runs = runs + 1
    local name, log = ("bench-election-%d"):format(runs), ("%s/election%d.log"):format(tmp, runs)
    local pids = {}
    local function spawn()
        local pid = sh(("%s bench/election_worker.lua %s %s %s %s %s >/dev/null 2>&1 & echo $!")
            :format(LUA, quote(target), database, name, ttl, quote(log)))
        pids[#pids + 1] = tonumber(pid)
    end
    local function wait_for(pred, what)
        local deadline = core.monotime() + ttl * 4 + 30
        while core.monotime() < deadline do
            local lines = elected_lines(log)
            local v = pred(lines)
            if v then return v end
            core.sleep(0.005)
        end
        error("election bench: no " .. what)
    end
    local failovers = {}
    local ok, err = pcall(function()
        for _ = 1, 3 do spawn() end
        local leader = wait_for(function(l) return l[1] end, "first leader")
        for _ = 1, SIZE.election_kills do
            -- past a renewal or more, at a random point of the renewal cycle
            core.sleep(ttl + math.random() * ttl / 3)
            local killed_at = core.time()
            os.execute(("kill -KILL %d"):format(leader.pid))
            spawn()
            leader = wait_for(function(l)
                local last = l[#l]
                return last and last.at > killed_at and last.pid ~= leader.pid and last
            end, "leader after a kill")
            failovers[#failovers + 1] = leader.at - killed_at
        end
    end)
    for _, pid in ipairs(pids) do os.execute(("kill -KILL %d 2>/dev/null"):format(pid)) end
    if not ok then error(err, 0) end
    table.sort(failovers)
    return failovers, ttl
end

local function section_election()
    for _, backend in ipairs(RECIPE_BACKENDS) do
        local failovers, ttl = election_run(backend)
        local worst = failovers[#failovers]
        local r = row({ section = "8 election", case = ("failover, ttl %g s"):format(ttl),
            impl = "cmpxchg " .. backend, p50 = percentile(failovers, 0.5) * 1e3,
            p99 = worst * 1e3, group = "election", phase = backend, procs = 3 })
        local list = {}
        for i, f in ipairs(failovers) do list[i] = ("%.2f"):format(f) end
        r.note = ("SIGKILL -> next on_elected: %s s"):format(table.concat(list, ", "))
        add_ratio(r, "worst / (ttl + ttl/3)", worst / (ttl + ttl / 3), 1)
    end
end

--[[ 9: scale (issue 19): hand-off latency and requests as contenders grow,
polling against etcd's pushed hand-off ]]

local SCALE_PROCS = Q and { 2 } or { 2, 8, 32, 64 }
local SCALE_IMPLS = {
    { id = "embedded", name = "cmpxchg embedded (polling)" },
    { id = "ravendb", name = "cmpxchg RavenDB (polling)" },
    { id = "etcd", name = "cmpxchg etcd (watch)" },
    { id = "etcd_poll", name = "cmpxchg etcd (polling: watch = false)" },
    { id = "etcdctl", name = "etcdctl lock (same cluster)" },
}

local function section_scale(only)
    local by = {}            -- by[id][procs] = stats
    for _, procs in ipairs(SCALE_PROCS) do
        for _, impl in ipairs(SCALE_IMPLS) do
            if only == nil or only[impl.id] then
                local reused = lock_results[impl.id .. ":" .. procs] ~= nil
                local s = lock_result(impl.id, procs)
                by[impl.id] = by[impl.id] or {}
                by[impl.id][procs] = s
                local r = row({ section = "9 scale", case = ("hand-off x%d"):format(procs),
                    impl = impl.name, ops_s = s.acq_s, p50 = s.p50 and s.p50 * 1e3,
                    p99 = s.p99 and s.p99 * 1e3, req_acq = s.req_acq, group = "scale",
                    phase = impl.id, procs = procs, handoffs = s.handoffs,
                    overlaps = s.overlaps })
                impl.rows = impl.rows or {}
                impl.rows[procs] = r
                local notes = {}
                if s.req_waiting then
                    notes[#notes + 1] = ("%.1f requests per second of waiting"):format(
                        s.req_waiting)
                end
                notes[#notes + 1] = ("%d hand-offs%s"):format(s.handoffs,
                    reused and ", section 4's run" or "")
                if s.overlaps > 0 then
                    notes[#notes + 1] = ("%d overlaps! (at most %.2f ms)"):format(s.overlaps,
                        s.worst_overlap * 1e3)
                end
                r.note = table.concat(notes, "; ")
                if impl.id ~= "etcdctl" and s.p50 and s.p50 > 0 then
                    add_ratio(r, "p99/p50", s.p99 / s.p50, 5, "<")
                end
            end
        end
        local w = by.etcd and by.etcd[procs]
        local r = SCALE_IMPLS[3].rows and SCALE_IMPLS[3].rows[procs]
        if w and w.p50 and r then
            local poll, ctl = by.etcd_poll and by.etcd_poll[procs], by.etcdctl and by.etcdctl[procs]
            if poll and poll.p50 then add_ratio(r, "p50 vs polling", w.p50 / poll.p50, 0.5) end
            if ctl and ctl.p50 then add_ratio(r, "p50 vs etcdctl", w.p50 / ctl.p50, 0.5) end
        end
    end
    -- requests per acquisition on etcd with watch, whatever the number of waiters
    local rows_w = SCALE_IMPLS[3].rows
    if rows_w and #SCALE_PROCS > 1 then
        local lo, hi = math.huge, 0
        for _, procs in ipairs(SCALE_PROCS) do
            local r = rows_w[procs]
            if r and r.req_acq then
                lo, hi = math.min(lo, r.req_acq), math.max(hi, r.req_acq)
            end
        end
        local last = rows_w[SCALE_PROCS[#SCALE_PROCS]]
        if last and hi > 0 then
            add_ratio(last, "req/acq most/least over 2-64", hi / lo, 1.5)
        end
    end
end

--[[ 10: inside nginx (issue 19): 40 requests waiting on one key, with and
without coalescing, and a lock-protected endpoint against lua-resty-lock's
shared-dict lock (bench/nginx/locks.conf, 2 workers) ]]

local NGX = {
    waiters = Q and 4 or 40,            -- requests waiting on one key
    settle = Q and 0.3 or 0.7,          -- seconds after all wait: backoffs at their cap, watches up
    window = Q and 0.5 or 2,            -- seconds of waiting measured
    clients = Q and 4 or 40,            -- concurrent clients of the protected endpoint
    hold = 0.001,                       -- seconds inside the protected section (ngx.sleep)
}

local function nginx_lua_installed()
    return os.execute("command -v nginx >/dev/null"
        .. " && test -f /usr/lib/nginx/modules/ngx_http_lua_module.so") == true
end

--- The section 10 nginx, the core built for its LuaJIT first.
local function locks_nginx()
    sh("make --no-print-directory BUILD=build/luajit LUA_PC=luajit all >/dev/null")
    return nginx("locks.conf")
end

--- GET /counters: {requests, waiting, done, count (of `key`'s sections)}.
local function ngx_counters(n, reset, key)
    local h = core.http_new()
    local status, body = h:request("GET", ("%s/counters?reset=%d&key=%s"):format(n.url,
        reset and 1 or 0, key or ""), nil, nil, 10)
    h:close()
    assert(status == 200, "nginx /counters: " .. tostring(body))
    local r, w, d, c, last = body:match(
        "requests (%d+) waiting (%-?%d+) done (%d+) count (%d+) last (%S+)")
    assert(r, "nginx /counters: " .. body)
    return { requests = tonumber(r), waiting = tonumber(w), done = tonumber(d),
             count = tonumber(c), last = tonumber(last) }
end

--- `count` GETs of `url` from one curl, `par` at a time, in the background:
-- its pid and the file where it writes one status code per reply.
local function curl_start(url, count, par)
    runs = runs + 1
    local out = ("%s/curl%d.out"):format(tmp, runs)
    local pid = sh(("curl -sS -Z --parallel-max %d --parallel-immediate --max-time 120"
        .. " -o /dev/null -w '%%{http_code}\\n' %s >%s 2>&1 </dev/null & echo $!")
        :format(par, quote(url .. "&i=[1-" .. count .. "]"), quote(out)))
    return tonumber(pid), out
end

local function alive(pid)
    return os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == true
end

--- Waits for `pred()` (polled), at most `seconds`; raises `what` after.
local function wait_for(pred, seconds, what)
    local deadline = core.monotime() + seconds
    while not pred() do
        if core.monotime() > deadline then error("nginx bench: " .. what) end
        core.sleep(0.01)
    end
end

--- The replies of a curl_start: how many were 200, and the others.
local function curl_replies(out)
    local ok, other = 0, {}
    for line in io.lines(out) do
        if line == "200" then ok = ok + 1 else other[#other + 1] = line end
    end
    return ok, other
end

--- NGX.waiters requests of nginx wait for a lock this process holds on
-- `backend`: the requests the stores of nginx send per second of waiting
-- (NGX.window, after NGX.settle), then the time from the release to the
-- last one's acquisition (each releases at once: they take it in turn) and
-- the requests sent meanwhile per acquisition (their releases included).
local function waiting_run(backend, coalesce)
    local n = locks_nginx()
    local target, database = bench_target(backend, "unused")
    local watch = backend ~= "etcd_poll"
    runs = runs + 1
    local key = ("bench-ngx-wait-%d"):format(runs)
    local holder = assert(require("cmpxchg").open(target, { database = database }))
    local l = assert(holder:lock(key, { ttl = 60, timeout = 10 }))
    ngx_counters(n, true)
    local url = ("%s/wait?target=%s&db=%s&key=%s&coalesce=%d&watch=%d&timeout=60"):format(n.url,
        target, database == "-" and "" or database, key, coalesce and 1 or 0, watch and 1 or 0)
    local pid, out = curl_start(url, NGX.waiters, NGX.waiters)
    wait_for(function() return ngx_counters(n).waiting >= NGX.waiters end, 30,
        "the requests never all waited")
    core.sleep(NGX.settle)
    local grpc0 = servers.etcd and etcd_messages()
    local c0, t0 = ngx_counters(n).requests, core.monotime()
    core.sleep(NGX.window)
    local c1, t1 = ngx_counters(n).requests, core.monotime()
    local grpc = servers.etcd and backend ~= "ravendb" and etcd_messages() - grpc0 or nil
    local released = core.time()
    assert(l:release())
    wait_for(function() return not alive(pid) end, 120, "the waiters never all took the lock")
    local after = ngx_counters(n)
    local drain = after.last - released
    holder:close()
    local ok, other = curl_replies(out)
    if ok ~= NGX.waiters then
        error(("nginx bench: %d of %d waiters failed (%s): %s"):format(NGX.waiters - ok,
            NGX.waiters, table.concat(other, " "), sh("tail -n 5 " .. quote(n.prefix)
            .. "/logs/error.log")))
    end
    return { requests = c1 - c0, seconds = t1 - t0, rate = (c1 - c0) / (t1 - t0), grpc = grpc,
             drain = drain, req_acq = (after.requests - c1) / NGX.waiters }
end

--- NGX.clients clients call the protected endpoint (impl "cmpxchg": the
-- embedded store; "dict": lua-resty-lock's shared-dict lock) without pause:
-- its sections per second over NGX.window after NGX.settle, and whether the
-- section's counter counted every one (a second holder would lose some).
local function protected_run(impl)
    local n = locks_nginx()
    runs = runs + 1
    local key = ("bench-ngx-protected-%d"):format(runs)
    ngx_counters(n, true)
    local url = ("%s/protected?impl=%s&target=%s&key=%s&hold=%s"):format(n.url, impl,
        tmp .. "/ngx-locks.db", key, NGX.hold)
    local pid, out = curl_start(url, 1000000, NGX.clients)
    core.sleep(NGX.settle)
    local d0, t0 = ngx_counters(n).done, core.monotime()
    core.sleep(NGX.window)
    local d1, t1 = ngx_counters(n).done, core.monotime()
    os.execute(("kill %d 2>/dev/null"):format(pid))
    wait_for(function() return not alive(pid) end, 10, "curl did not stop")
    -- the requests in flight end (their handlers run on without a client)
    local last, still = -1, 0
    wait_for(function()
        local c = ngx_counters(n, false, key)
        if c.done == last then still = still + 1 else last, still = c.done, 0 end
        return still >= 50 and c.done == c.count
    end, 120, "the protected sections never settled (or their counter lost some)")
    local ok = curl_replies(out)
    return { rate = (d1 - d0) / (t1 - t0), sections = last, ok = ok }
end

local NGX_BACKENDS = {
    { id = "ravendb", name = "RavenDB (emulator, polling)" },
    { id = "etcd", name = "etcd (watch)" },
    { id = "etcd_poll", name = "etcd (polling: watch = false)" },
}

local function section_nginx()
    if not nginx_lua_installed() then
        local r = row({ section = "10 nginx", case = "-", impl = "-", group = "nginx" })
        r.note = "skipped: nginx with its lua module is not installed"
        return
    end
    for _, b in ipairs(NGX_BACKENDS) do
        local with, without = waiting_run(b.id, true), waiting_run(b.id, false)
        local case = ("%s, %d waiting"):format(b.name, NGX.waiters)
        local rw
        for _, v in ipairs({ { with, "cmpxchg, coalescing (default)" },
                             { without, "cmpxchg, coalesce = false" } }) do
            local s = v[1]
            local r = row({ section = "10 nginx", case = case, impl = v[2], group = "nginx",
                phase = b.id, procs = NGX.waiters, req_s = s.rate, req_acq = s.req_acq })
            r.note = ("%.1f requests/s to the server while %d wait (%d in %.1f s%s);"
                .. " after the release all took it in %.2f s"):format(s.rate, NGX.waiters,
                s.requests, s.seconds, s.grpc and (", %d gRPC messages"):format(s.grpc) or "",
                s.drain)
            if v[1] == with then rw = r end
        end
        if without.requests > 0 then
            add_ratio(rw, "req/s with / without coalescing", with.rate / without.rate, 0.1)
        else
            rw.ratios = { "req/s with / without coalescing: n/a (no request while waiting"
                .. " either way)" }
        end
    end
    local res = {}
    for _, impl in ipairs({ "cmpxchg", "dict" }) do res[impl] = protected_run(impl) end
    local case = ("protected endpoint, %d clients, hold %g ms"):format(NGX.clients,
        NGX.hold * 1e3)
    local rc = row({ section = "10 nginx", case = case, impl = "cmpxchg embedded (in nginx)",
        ops_s = res.cmpxchg.rate, group = "nginx", phase = "protected", procs = NGX.clients })
    add_note(rc, "sections/s vs shared dict", res.cmpxchg.rate / res.dict.rate)
    rc.note = ("%d sections, counter exact"):format(res.cmpxchg.sections)
    local rd = row({ section = "10 nginx", case = case,
        impl = "ngx.shared.DICT lock (lua-resty-lock's mechanism)", ops_s = res.dict.rate,
        group = "nginx", phase = "protected", procs = NGX.clients })
    rd.note = ("%d sections, counter exact"):format(res.dict.sections)
end

--[[ 5: memory ]]

local function section_memory()
    local url = ravendb().url
    local out = sh(("%s bench/memory.lua %s %s %d %d"):format(LUA, tmp .. "/memory.db", url,
        SIZE.mem_embedded, SIZE.mem_http))
    for kind, ops, s, e in out:gmatch("rss (%S+) (%d+) (%d+) (%d+)") do
        local r = row({ section = "5 memory", case = ("%s ops of %s"):format(ops, kind),
            impl = "cmpxchg (Lua 5.4)", rss_start = tonumber(s), rss_end = tonumber(e),
            group = "memory", phase = kind })
        local growth = (r.rss_end - r.rss_start) / 1024
        r.note = ("RSS %.1f -> %.1f MB"):format(r.rss_start / 1048576, r.rss_end / 1048576)
        add_ratio(r, "RSS growth MB", growth / 1024, 1.0)
    end
    local vg = ("timeout 240 valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite"
        .. " --show-leak-kinds=definite --error-exitcode=87"
        .. " --suppressions=spec/support/valgrind.supp"
        .. " %s bench/memory.lua %s %s %d %d"):format(LUA, tmp .. "/valgrind.db", url,
        SIZE.vg_embedded, SIZE.vg_http)
    local p = assert(io.popen(vg .. " 2>&1"))
    local text = p:read("a")
    local ok, _, code = p:close()
    local r = row({ section = "5 memory", case = ("valgrind, %d + %d ops"):format(SIZE.vg_embedded,
        SIZE.vg_http), impl = "cmpxchg (Lua 5.4)", group = "memory", phase = "valgrind" })
    r.note = ok and "no leak, no error" or ("valgrind exit %s"):format(tostring(code))
    r.met = ok
    r.ratios = { ("definite leaks/errors: %s"):format(ok and "none (met)" or "FOUND (MISSED)") }
    if not ok then io.stderr:write(text) end
end

--[[ Output ]]

local function machine()
    local cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-"):gsub("^%s+", "")
    local load = sh("cut -d' ' -f1-3 /proc/loadavg")
    local busy = sh("ps -eo pcpu=,comm= --sort=-pcpu | head -n 6"
        .. " | awk '$1 > 5 {print $2\"(\"$1\"%)\"}'"
        .. " | tr '\\n' ' '")
    return ("%s cores, %s; load average %s; busiest processes now: %s"):format(sh("nproc"), cpu,
        load, busy ~= "" and busy or "none")
end

local function print_table(header)
    local cols = { "section", "case", "impl", "ops/s", "CPU us/op", "p50 ms", "p99 ms", "req/acq",
                   "ratios vs targets" }
    local lines = {}
    for _, r in ipairs(rows) do
        lines[#lines + 1] = { r.section, r.case, r.impl, fmt(r.ops_s, "%.0f"), fmt(r.cpu_us),
            fmt(r.p50, "%.2f"), fmt(r.p99, "%.2f"), fmt(r.req_acq, "%.1f"),
            table.concat(r.ratios or {}, "; ") .. (r.note and (" [" .. r.note .. "]") or "") }
    end
    local widths = {}
    for i, c in ipairs(cols) do widths[i] = #c end
    for _, l in ipairs(lines) do
        for i = 1, #cols - 1 do widths[i] = math.max(widths[i], #l[i]) end
    end
    local function line(cells)
        local parts = {}
        for i, c in ipairs(cells) do
            local spec = (i >= 4 and "%" or "%-") .. widths[i] .. "s"
            parts[i] = i < #cols and spec:format(c) or c
        end
        return "| " .. table.concat(parts, " | ") .. " |"
    end
    local out = { header, "", line(cols) }
    local sep = {}
    for i = 1, #cols do sep[i] = i < #cols and ("-"):rep(widths[i]) or "---" end
    out[#out + 1] = "|-" .. table.concat(sep, "-|-") .. "-|"
    for _, l in ipairs(lines) do out[#out + 1] = line(l) end
    local text = table.concat(out, "\n") .. "\n"
    io.write("\n", text)
    write_file(opts.out .. "/table.md", text)
end

local function csv_field(v)
    if v == nil then return "" end
    if type(v) == "number" then return ("%.6g"):format(v) end
    v = tostring(v)
    if v:find('[,"\n]') then v = '"' .. v:gsub('"', '""') .. '"' end
    return v
end

local function write_csv()
    local cols = { "section", "case", "impl", "procs", "ops_s", "cpu_us", "p50", "p99", "req_acq",
                   "req_s", "handoffs", "overlaps", "rss_start", "rss_end", "met", "ratios" }
    local out = { table.concat(cols, ",") }
    for _, r in ipairs(rows) do
        local cells = {}
        for i, c in ipairs(cols) do
            local v = r[c]
            if c == "ratios" then v = table.concat(r.ratios or {}, "; ")
            elseif c == "met" then v = r.met == nil and "" or tostring(r.met) end
            cells[i] = csv_field(v)
        end
        out[#out + 1] = table.concat(cells, ",")
    end
    write_file(opts.out .. "/bench.csv", table.concat(out, "\n") .. "\n")
end

--- One .dat file per panel: rows = cases, columns = implementations.
local function panel_data(file, group, value, impls)
    local cases, seen, by = {}, {}, {}
    for _, r in ipairs(rows) do
        if r.group == group and r[value] then
            local c = group == "lock" and ("x%d"):format(r.procs)
                or ("%s x%d"):format(r.phase, r.procs)
            if not seen[c] then seen[c] = true; cases[#cases + 1] = c end
            by[c .. "|" .. r.impl] = r[value]
        end
    end
    local heads = { '"case"' }
    for i, impl in ipairs(impls) do heads[i + 1] = ("%q"):format(impl) end
    local out = { table.concat(heads, " ") }
    for _, c in ipairs(cases) do
        local cells = { '"' .. c .. '"' }
        for _, impl in ipairs(impls) do cells[#cells + 1] = by[c .. "|" .. impl] and
            ("%.4g"):format(by[c .. "|" .. impl]) or "NaN" end
        out[#out + 1] = table.concat(cells, " ")
    end
    write_file(file, table.concat(out, "\n") .. "\n")
    return #cases > 0
end

local function chart(header)
    if os.execute("command -v gnuplot >/dev/null 2>&1") ~= true then
        io.write("gnuplot is missing: no chart\n")
        return
    end
    local d = opts.out
    local panels = {
        { "ravendb", "cpu_us", { "cmpxchg (Lua 5.4)", "npm ravendb", LUA_FLOOR, "libcurl floor" },
          "1. RavenDB: client CPU per op (us, log)", true },
        { "etcd", "cpu_us", { "cmpxchg (Lua 5.4)", LUA_FLOOR, "libcurl floor" },
          "2. etcd: client CPU per op (us)", false },
        { "embedded", "ops_s", { "cmpxchg (Lua 5.4)", "SQLite floor" },
          "3. embedded: ops/s (log)", true },
        { "lock", "p50", { LOCK_IMPLS[1].name, LOCK_IMPLS[2].name, LOCK_IMPLS[3].name,
                           LOCK_IMPLS[4].name, LOCK_IMPLS[5].name, LOCK_IMPLS[6].name },
          "4. locks: hand-off p50 (ms, log) by contenders", true },
    }
    local script = { "set terminal pngcairo size 1600,1100 font 'sans,9'",
        ("set output '%s/bench.png'"):format(d), "set style data histograms",
        "set style histogram clustered gap 1", "set style fill solid 0.85 border -1",
        "set key top left font ',8' noenhanced", "set xtics rotate by -30 noenhanced font ',8'",
        "set grid ytics", "set datafile missing 'NaN'",
        ("set multiplot layout 2,2 title %q noenhanced"):format(header) }
    for i, p in ipairs(panels) do
        local file = ("%s/panel%d.dat"):format(d, i)
        if panel_data(file, p[1], p[2], p[3]) then
            script[#script + 1] = ("set title %q"):format(p[4])
            script[#script + 1] = p[5] and "set logscale y; set autoscale y"
                or "unset logscale y; set yrange [0:*]"
            local plots = {}
            for j = 1, #p[3] do
                plots[j] = ("'%s' using %d:xtic(1) title columnhead(%d)"):format(file, j + 1, j + 1)
            end
            script[#script + 1] = "plot " .. table.concat(plots, ", ")
        end
    end
    script[#script + 1] = "unset multiplot"
    write_file(d .. "/bench.gp", table.concat(script, "\n") .. "\n")
    local ok = os.execute("gnuplot " .. quote(d .. "/bench.gp"))
    io.write(ok and ("chart: %s/bench.png\n"):format(d) or "gnuplot failed: no chart\n")
end

--[[ Main ]]

local function main()
    sh("mkdir -p " .. quote(opts.out))
    local started = core.monotime()
    local before = machine()
    local took = {}         -- "N: S s" per section run: what to shorten when make bench grows
    local function timed(n, fn, ...)
        if not wanted(n) then return end
        local t0 = core.monotime()
        fn(...)
        took[#took + 1] = ("%d: %.0f s"):format(n, core.monotime() - t0)
        io.stderr:write(("bench: section %s (load average %s)\n"):format(took[#took],
            sh("cut -d' ' -f1-3 /proc/loadavg")))
    end
    timed(1, section_ravendb)
    timed(2, section_etcd)
    timed(3, section_embedded)
    timed(4, section_locks)
    timed(5, section_memory)
    timed(6, section_transactions)
    timed(7, section_fairness)
    timed(8, section_election)
    local only
    if os.getenv("BENCH_SCALE_ONLY") then       -- a subset, while tuning one backend
        only = {}
        for id in os.getenv("BENCH_SCALE_ONLY"):gmatch("[%w_]+") do only[id] = true end
    end
    timed(9, section_scale, only)
    timed(10, section_nginx)
    local header = ("cmpxchg bench %s%s, %s; took %.0f s (sections %s). Machine: %s"):format(
        os.date("!%Y-%m-%d %H:%M UTC"), opts.quick and " (--quick: figures meaningless)" or "",
        "127.0.0.1 only", core.monotime() - started, table.concat(took, ", "), before)
    print_table(header)
    write_csv()
    chart(("cmpxchg bench %s, %s cores"):format(os.date("!%Y-%m-%d"), sh("nproc")))
    local missed = 0
    for _, r in ipairs(rows) do if r.met == false then missed = missed + 1 end end
    io.write(("targets missed: %d; results in %s\n"):format(missed, opts.out))
end

local ok, err = xpcall(main, debug.traceback)
stop_servers()
os.execute("rm -rf " .. quote(tmp))
if not ok then
    io.stderr:write("bench: ", tostring(err), "\n")
    os.exit(1)
end
