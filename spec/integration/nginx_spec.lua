-- The library inside a real nginx (Debian's nginx-core + libnginx-mod-http-lua,
-- 2 workers, started by scripts/nginx-test-server), driven over HTTP: the API on
-- every backend, lock contention across both workers, a worker that keeps
-- answering while requests wait, auto-renew through ngx.timer, with_lock on
-- error, the phases that cannot yield, the cosocket transport and its TLS.
-- The handlers are spec/support/nginx/app.lua.
local cjson = require "cjson"
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"
local etcd_harness = require "spec.support.etcd_harness"
local helpers = require "spec.helpers"
local raven_harness = require "spec.support.ravendb_harness"

local sh = helpers.sh

-- the sanitizer passes would only run nginx again: it loads the LuaJIT build
-- of the core (build/luajit), which they do not instrument
if os.getenv("CMPXCHG_SKIP_NGINX") == "1" then
    describe("nginx", function()
        pending("runs in the plain pass only (nginx loads the uninstrumented LuaJIT build)")
    end)
    return
end

sh("scripts/nginx-test-server start")
local base = sh("scripts/nginx-test-server url")
local prefix = sh("scripts/nginx-test-server prefix")

local function escape(s)
    return (tostring(s):gsub("[^%w%-%._~/]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local function query(params)
    local parts = {}
    for k, v in pairs(params) do parts[#parts + 1] = k .. "=" .. escape(v) end
    table.sort(parts)
    return table.concat(parts, "&")
end

local http = core.http_new()

--- GET base..path?params: status, decoded JSON body (raw text when not JSON).
local function get(path, params, timeout)
    local status, body = http:request("GET", base .. path .. "?" .. query(params or {}), nil,
        nil, timeout or 60)
    assert(status, body)
    local ok, value = pcall(cjson.decode, body)
    return status, ok and value or body
end

local counter = 0
local function fresh(name)
    counter = counter + 1
    return ("%s-%d-%d"):format(name, core.pid(), counter)
end

--- Runs `n` GETs at once with curl --parallel; returns a handle whose
-- finish() gives the decoded replies (nil for a request that got no answer).
local function parallel(n, path, params_of)
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. helpers.shell_quote(dir)))
    local cmd = { "curl -s --no-progress-meter -Z --parallel-max", n, "--max-time 90" }
    for i = 1, n do
        cmd[#cmd + 1] = helpers.shell_quote(base .. path .. "?" .. query(params_of(i)))
        cmd[#cmd + 1] = "-o " .. helpers.shell_quote(("%s/%d"):format(dir, i))
    end
    local p = assert(io.popen(table.concat(cmd, " ") .. " 2>&1; echo exit=$?"))
    return {
        finish = function()
            local out = p:read("*a")
            p:close()
            local replies = {}
            for i = 1, n do
                local f = io.open(("%s/%d"):format(dir, i))
                if f then
                    local ok, value = pcall(cjson.decode, f:read("*a"))
                    f:close()
                    replies[i] = ok and value or nil
                end
            end
            os.execute("rm -rf " .. helpers.shell_quote(dir))
            return replies, out
        end,
    }
end

--- Error lines that nginx logged ([error], [crit], [alert], [emerg]) or
-- uncaught Lua errors, since `from` bytes into error.log.
local function log_size()
    local f = io.open(prefix .. "/logs/error.log")
    if not f then return 0 end
    local size = f:seek("end")
    f:close()
    return size
end

local function log_errors(from)
    local f = io.open(prefix .. "/logs/error.log")
    if not f then return {} end
    f:seek("set", from)
    local bad = {}
    for line in f:lines() do
        if line:find("%[error%]") or line:find("%[crit%]") or line:find("%[alert%]") or
                line:find("%[emerg%]") or line:find("lua entry thread aborted", 1, true) then
            bad[#bad + 1] = line
        end
    end
    f:close()
    return bad
end

--[[ The backends, each a target for the handlers ]]

local backends = {
    {
        name = "embedded",
        params = function()
            return { target = prefix .. "/data/" .. fresh("store") .. ".db" }
        end,
    },
    {
        name = "ravendb emulator",
        params = function()
            local server = raven_harness.server()
            return { target = table.concat(server.urls, ","),
                     db = raven_harness.create_database(server) }
        end,
    },
    {
        name = "etcd cluster",
        params = function()
            local cluster = etcd_harness.cluster()
            return { target = table.concat(cluster.endpoints, ","),
                     db = etcd_harness.fresh_prefix() }
        end,
    },
}

local function with(params, extra)
    local t = {}
    for k, v in pairs(params) do t[k] = v end
    for k, v in pairs(extra) do t[k] = v end
    return t
end

local function distinct(list)
    local seen, n = {}, 0
    for _, v in ipairs(list) do
        if not seen[v] then seen[v], n = true, n + 1 end
    end
    return n
end

local ping_report = {}

for _, backend in ipairs(backends) do
    describe("nginx with the " .. backend.name .. " backend", function()
        local params, log_start

        setup(function()
            params = backend.params()
        end)

        before_each(function() log_start = log_size() end)

        after_each(function()
            local bad = log_errors(log_start)
            assert.same({}, bad, "nginx logged errors:\n" .. table.concat(bad, "\n"))
        end)

        it("serves the whole API from a request handler", function()
            local status, r = get("/api", with(params, { prefix = fresh("api") }))
            assert.equal(200, status, cjson.encode(r))
            assert.equal("content", r.phase)
            assert.is_true(r.put_new[1])
            local first = r.put_new[2]
            assert.same({ false, first, { n = 1, s = "x" } }, r.put_again)
            assert.is_true(r.cas[1])
            assert.is_true(r.cas[2] > first)
            assert.same({ false, r.cas[2], { n = 3 } }, r.stale)
            assert.same({ { n = 3 }, r.cas[2] }, r.get)
            assert.same({ cjson.null, 0 }, r.absent)
            local n = 0
            for _ in pairs(r.get_many) do n = n + 1 end
            assert.equal(2, n)
            assert.equal(2, #r.list)
            assert.is_number(r.lock.token)
            assert.is_true(r.lock.held)
            assert.equal("timeout", r.lock_busy[2])
            assert.matches("^timeout: lock '.-/lock' is held by ", r.lock_busy[1])
            assert.same({ true }, r.release)
            assert.same({ true, 42 }, r.with_lock)
            assert.is_true(r["delete/a"][1])
            assert.is_true(r["delete/b"][1])
            assert.equal(0, r.left)
        end)

        it("gives one lock to 50 concurrent requests on 2 workers, one at a time", function()
            local tag, key = fresh("contend"), fresh("lock")
            local replies = parallel(50, "/contend", function()
                return with(params, { key = key, tag = tag, hold = 0.01 })
            end).finish()
            local pids, tokens = {}, {}
            for i = 1, 50 do
                local r = replies[i]
                assert.is_table(r, "request " .. i .. " got no answer")
                assert.is_nil(r.error, r.error)
                assert.is_true(r.released, cjson.encode(r))
                pids[#pids + 1], tokens[#tokens + 1] = r.pid, r.token
            end
            local _, stats = get("/stats", { tag = tag })
            assert.same({ overlaps = 0, stale = 0, done = 50, inside = 0 }, stats)
            assert.equal(2, distinct(pids), "both workers took part")
            assert.equal(50, distinct(tokens), "every holder had its own token")
        end)

        it("keeps answering /ping while many requests wait for a lock", function()
            local tag, key = fresh("ping"), fresh("lock")
            local job = parallel(40, "/contend", function()
                return with(params, { key = key, tag = tag, hold = 0.05 })
            end)
            helpers.wait_until(function()
                local _, r = get("/ping", nil, 5)
                return r.waiting > 0
            end, 20, "requests waiting for the lock")
            local pinger = core.http_new()
            local latencies, saw_waiting = {}, 0
            for i = 1, 20 do
                local t0 = core.monotime()
                local status, body = pinger:request("GET", base .. "/ping", nil, nil, 10)
                latencies[i] = core.monotime() - t0
                assert.equal(200, status, body)
                if cjson.decode(body).waiting > 0 then saw_waiting = saw_waiting + 1 end
                core.sleep(0.02)
            end
            pinger:close()
            local replies = job.finish()
            for i = 1, 40 do
                assert.is_table(replies[i], "request " .. i .. " got no answer")
                assert.is_true(replies[i].released, cjson.encode(replies[i]))
            end
            local _, stats = get("/stats", { tag = tag })
            assert.equal(0, stats.overlaps)
            assert.is_true(saw_waiting > 0, "no ping was answered while requests waited")
            table.sort(latencies)
            local line = ("/ping under lock contention (%s, 40 waiting requests): median %.2f ms, "
                .. "max %.2f ms over 20 pings, %d of them while requests waited")
                :format(backend.name, latencies[10] * 1000, latencies[20] * 1000, saw_waiting)
            ping_report[#ping_report + 1] = line
            io.write("\n", line, "\n")
            assert.is_true(latencies[20] < 5, line)     -- generous: answered, not timed out
        end)

        it("renews a lock through ngx.timer while the section outlasts its ttl", function()
            local status, r = get("/renew", with(params, { key = fresh("renew"), ttl = 1.5,
                                                           hold = 4 }))
            assert.equal(200, status, cjson.encode(r))
            assert.is_true(r.last > r.first, "the token advanced with the renewals")
            assert.is_true(#r.tokens >= 3, cjson.encode(r.tokens))
            for i = 2, #r.tokens do assert.is_true(r.tokens[i] > r.tokens[i - 1]) end
            assert.is_true(r.held)
            assert.is_true(r.owner_matches)
            assert.is_true(r.valid_in > 0)
            assert.same({ got = false, code = "timeout", err = r.contender.err }, r.contender)
            assert.same({ true }, r.release)
            assert.equal(0, r.left)
        end)

        it("marks an auto-renewed lock lost when its lease was taken, and calls on_lost",
            function()
                local status, r = get("/renew_lost", with(params, { key = fresh("lost"),
                                                                    ttl = 1.5 }))
                assert.equal(200, status, cjson.encode(r))
                assert.is_true(r.stolen)
                assert.equal(0, r.hooks_before, "the hook ran inside the timer")
                assert.is_false(r.held)
                assert.equal(1, #r.hooked)
                assert.matches("^lost: ", r.hooked[1].why)
                assert.is_true(r.hooked[1].same)
                assert.same({ false, "lost" }, r.release)
                assert.is_true(r.cleanup[1])
            end)

        it("releases in with_lock when the section raises, also while auto-renewed", function()
            local status, r = get("/with_lock_error", with(params, { key = fresh("wl") }))
            assert.equal(200, status, cjson.encode(r))
            for _, case in ipairs(r) do
                assert.is_true(case.raised)
                assert.matches("boom in the section", case.err)
                assert.equal(0, case.left)
                assert.is_true(case.again)
                assert.is_true(case.again_release)
            end
            assert.equal(2, #r)
        end)

        it("fails fast in the phases that cannot yield", function()
            for _, phase in ipairs({ "log", "header_filter", "set" }) do
                local id = fresh(phase)
                local key = fresh("phase")
                assert.equal(200, (get("/phase/" .. phase, with(params, { id = id, key = key }))))
                local r = helpers.wait_until(function()
                    local _, v = get("/phase/result", { id = id })
                    return v ~= cjson.null and v
                end, 5, "the " .. phase .. " probe")
                assert.equal(phase, r.phase)
                local why = "cannot run in the " .. phase .. " phase: nginx allows no waiting"
                if backend.name == "embedded" then
                    -- the file needs no wait: it works, but a lock that would wait raises
                    assert.same({ ok = true }, r.open)
                    assert.matches(why, r.lock_wait.raised, 1, true)
                    assert.matches("store:lock with a timeout", r.lock_wait.raised, 1, true)
                    assert.same({ ok = true }, r.lock_now)
                else
                    -- a server store needs the network at once
                    assert.matches(why, r.open.raised, 1, true)
                    assert.matches("cmpxchg: a request to http://", r.open.raised, 1, true)
                end
            end
        end)
    end)
end

describe("nginx with an embedded store whose file another process holds", function()
    it("waits for the write lock with ngx.sleep, never in SQLite's busy handler", function()
        local path = prefix .. "/data/" .. fresh("held") .. ".db"
        local release = path .. ".release"
        local st = assert(cmpxchg.open(path))
        assert(st:put("before", 1, 0))
        st:close()
        -- sqlite3 takes the file's write lock (waiting for the probe's writes
        -- below) and keeps it until `release` exists (a minute at most)
        local q = helpers.shell_quote
        local holder = assert(io.popen("sqlite3 " .. q(path) .. " >/dev/null 2>&1", "w"))
        holder:write(".timeout 60000\nBEGIN IMMEDIATE;\n.shell for i in $(seq 1200); do [ -e " .. q(release)
            .. " ] && break; sleep 0.05; done\nCOMMIT;\n")
        holder:flush()
        local probe = assert(cmpxchg.open(path, { timeout = 0 }))
        helpers.wait_until(function()
            local ok, err, code = probe:put(fresh("probe"), 1, 0)
            assert(ok or code == "timeout", err)
            return ok == nil
        end, 30, "sqlite3 holding the file")
        probe:close()
        -- the handler releases the holder from a light thread of its worker:
        -- 20 s is a generous bound for a write that waits for ticks only
        local answered, status, r = pcall(get, "/busy_write",
            { target = path, key = "k", release = release }, 20)
        os.execute("touch " .. q(release))      -- whatever happened, the holder ends
        holder:close()
        assert(answered, "no answer in 20 s: the worker was blocked: " .. tostring(status))
        assert.equal(200, status, cjson.encode(r))
        assert.same({ true, "nil", "nil" }, { r.ok, tostring(r.err), tostring(r.code) })
        assert.is_true(r.ticks >= 5, "the worker ran its light thread while it waited")
    end)
end)

describe("nginx", function()
    it("loads the library in init_by_lua and init_worker_by_lua, and refuses to wait there",
        function()
            local status, r = get("/phase/init")
            assert.equal(200, status)
            for _, phase in ipairs({ "init", "init_worker" }) do
                local p = r[phase]
                assert.equal(phase, p.phase)
                assert.same({ ok = true }, p.open)
                assert.same({ ok = true }, p.lock_now)
                assert.matches("cannot run in the " .. phase .. " phase: nginx allows no waiting",
                    p.lock_wait.raised, 1, true)
                assert.matches("cannot run in the " .. phase .. " phase: nginx allows no waiting",
                    p.server.raised, 1, true)
            end
        end)

    it("gives every forked worker its own random ids (raft-request-id, write ids)", function()
        -- the master drew an id before forking; each worker drew one after
        local status, r = get("/phase/init")
        assert.equal(200, status)
        local seen = { [r.init.uuid] = "master" }
        assert.equal(2, #r.worker_uuids)
        for i, id in ipairs(r.worker_uuids) do
            assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", id)
            assert.is_nil(seen[id], "worker " .. i .. " repeated the id of " .. tostring(seen[id]))
            seen[id] = "worker " .. i
        end
    end)

    it("reads sized and chunked replies over cosockets, with timeouts and refusals", function()
        local status, r = get("/transport")
        assert.equal(200, status, cjson.encode(r))
        assert.same({ status = 200, body = "part1;part2;part3;part4;part5;", te = "chunked" },
            r.chunked)
        assert.same({ status = 200, body = "" }, r.empty)
        assert.equal(200, r.sized.status)
        assert.is_true(r.sized.body.pong)
        -- a write the server read on a pooled connection before it died is
        -- not sent again by the transport (it could be applied twice): the
        -- backend decides what its unknown outcome means
        assert.same({ "connect", 1 }, { r.dropped.code, r.dropped.copies }, r.dropped.err)
        assert.equal("timeout", r.timeout.code)
        assert.matches("^timeout: GET http://127.0.0.1:%d+/slow%?s=2: read timed out", r.timeout.err)
        assert.is_false(r.timeout.unsent)          -- the request went out
        assert.equal("connect", r.refused.code)
        assert.matches("^connect: GET http://127.0.0.1:1/: connect failed", r.refused.err)
        assert.is_true(r.refused.unsent)            -- nothing reached the server
        assert.equal("http", r.huge.code, r.huge.err)      -- refused before reading 300 MB
        assert.matches("^http: GET http://127.0.0.1:%d+/huge: reply is too large", r.huge.err)
        assert.is_false(r.bad_header[1])
        assert.matches("bad header 'X%-A'", r.bad_header[2])
    end)

    it("speaks TLS with a client certificate, and verifies servers by default", function()
        local server = raven_harness.server("tls")
        local certs = server.certs
        local good = { ca = certs .. "/ca.crt", cert = certs .. "/client.crt",
                       key = certs .. "/client.key" }
        local db = raven_harness.create_database(server, good)
        local status, r = get("/tls", { url = server.urls[1], db = db, cert = good.cert,
                                        key = good.key, ca = good.ca })
        assert.equal(200, status, cjson.encode(r))
        -- this nginx trusts no CA (no lua_ssl_trusted_certificate): verification fails
        assert.equal("tls", r.verified.code, r.verified.err)
        assert.matches("lua_ssl_trusted_certificate", r.verified.err, 1, true)
        assert.same({ ok = true, value = "unverified" }, r.unverified)
        assert.equal("auth", r.no_cert.code, r.no_cert.err)
        assert.equal("tls", r.with_ca.code)
        assert.matches("tls.ca is not available inside nginx", r.with_ca.err, 1, true)
    end)

    teardown(function()
        if #ping_report > 0 then io.write("\n", table.concat(ping_report, "\n"), "\n") end
    end)
end)
