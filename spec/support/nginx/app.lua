--- The handlers of the test nginx (spec/support/nginx/nginx.conf.in), driven
-- over HTTP by spec/integration/nginx_spec.lua. Each answers one JSON object.
-- Query arguments: target (a path, a URL, or comma-separated URLs) and db
-- (the RavenDB database / etcd prefix); more per handler.
local cjson = require "cjson"
local cmpxchg = require "cmpxchg"

local app = {}

local stores = {}               -- per worker: one open store per target, for every request

local function args()
    return ngx.req.get_uri_args()
end

local function target_of(a)
    local target = a.target
    if target:find(",", 1, true) then
        local list = {}
        for url in target:gmatch("[^,]+") do list[#list + 1] = url end
        target = list
    end
    return target, (a.db and a.db ~= "") and { database = a.db } or nil
end

--- The worker's store for the request's target, opened on first use.
local function store_for(a)
    local id = a.target .. "#" .. (a.db or "")
    local st = stores[id]
    if st == nil or cmpxchg.type(st) ~= "store" then
        local target, opts = target_of(a)
        local err, code
        st, err, code = cmpxchg.open(target, opts)
        if not st then error(("open %s: %s (%s)"):format(a.target, err, code)) end
        stores[id] = st
    end
    return st
end

local function reply(t, status)
    ngx.status = status or 200
    ngx.say(cjson.encode(t))
end

local function fail(msg)
    reply({ error = tostring(msg) }, 500)
end

--- Runs `fn(args)`; a raised error is answered with 500 and its message.
local function guarded(fn)
    local ok, err = pcall(fn, args())
    if not ok then fail(err) end
end

--- A write to an embedded store (opened here with timeout = 30) whose file
-- another process holds (its write lock) until the file a.release exists.
-- A light thread ticks meanwhile and, at its fifth tick, creates that file:
-- the write is waited out with ngx.sleep, so the worker runs the ticker and
-- the holder lets go. A worker blocked in SQLite's busy handler (a sleep in
-- C) would never tick, and the request would hang for the whole 30 s.
function app.busy_write()
    guarded(function(a)
        local ticks, done = 0, false
        local function release()
            local f = io.open(a.release, "w")
            if f then f:close() end
        end
        local ticker = ngx.thread.spawn(function()
            for _ = 1, 6000 do              -- bounded: a minute at most
                ngx.sleep(0.01)
                if done then return end
                ticks = ticks + 1
                if ticks == 5 then release() end
            end
        end)
        local st, err, code = cmpxchg.open(a.target, { timeout = 30 })
        local ok
        if st then
            local index
            ok, index, code = st:put(a.key, "v", 0)
            if ok then code = nil else err = index end
            st:close()
        end
        local seen = ticks
        done = true
        release()                           -- whatever happened, the holder ends
        ngx.thread.wait(ticker)
        reply({ ok = ok, err = err, code = code, ticks = seen })
    end)
end

function app.ping()
    local dict = ngx.shared.test
    reply({ pong = true, pid = ngx.worker.pid(), waiting = dict:get("waiting") or 0 })
end

--- The API through nginx: every store method, answered as seen here.
function app.api()
    guarded(function(a)
        local st = store_for(a)
        local p = a.prefix
        local r = {}
        r.put_new = { st:put(p .. "/a", { n = 1, s = "x" }, 0) }
        r.put_again = { st:put(p .. "/a", { n = 2 }, 0) }
        local _, index_a = st:get(p .. "/a")
        r.cas = { st:put(p .. "/a", { n = 3 }, index_a) }
        r.stale = { st:put(p .. "/a", { n = 4 }, index_a) }
        r.get = { st:get(p .. "/A") }                  -- keys are case-insensitive
        r.absent = { st:get(p .. "/none") }
        st:put(p .. "/b", "two", 0)
        r.get_many = st:get_many({ p .. "/a", p .. "/b", p .. "/none" })
        local items = st:list(p .. "/")
        r.list = {}
        for i, item in ipairs(items) do r.list[i] = { key = item.key, index = item.index } end
        local l, err = st:lock(p .. "/lock", { timeout = 0, ttl = 10 })
        r.lock = { token = l and l:token(), held = l and l:is_held(), err = err }
        r.lock_busy = { select(2, st:lock(p .. "/lock", { timeout = 0.2 })) }
        r.release = { l:release() }
        r.with_lock = { st:with_lock(p .. "/lock", { timeout = 1 }, function(x) return x * 2 end,
            21) }
        for _, k in ipairs({ "/a", "/b" }) do
            local _, idx = st:get(p .. k)
            r["delete" .. k] = { st:delete(p .. k, idx) }
        end
        r.left = #st:list(p .. "/")
        r.pid = ngx.worker.pid()
        r.phase = ngx.get_phase()
        reply(r)
    end)
end

--- One contender for a lock: counts holders inside the section (across
-- both workers, in the shared dict), checks that tokens only grow.
function app.contend()
    guarded(function(a)
        local st = store_for(a)
        local dict = ngx.shared.test
        local tag = a.tag or "c"
        local hold = tonumber(a.hold) or 0.01
        dict:incr("waiting", 1, 0)
        local l, err, code = st:lock(a.key, { timeout = tonumber(a.timeout) or 60, ttl = 30 })
        dict:incr("waiting", -1, 0)
        if not l then return reply({ error = err, code = code }, 503) end
        local inside = dict:incr(tag .. ":inside", 1, 0)
        if inside > 1 then dict:incr(tag .. ":overlaps", 1, 0) end
        local token = l:token()
        local last = dict:get(tag .. ":last") or -1
        if token <= last then dict:incr(tag .. ":stale", 1, 0) end
        dict:set(tag .. ":last", token)
        ngx.sleep(hold)
        dict:incr(tag .. ":inside", -1, 0)
        dict:incr(tag .. ":done", 1, 0)
        local ok, rerr = l:release()
        reply({ token = token, pid = ngx.worker.pid(), released = ok, err = rerr,
                attempts = l.attempts })
    end)
end

function app.stats()
    local dict = ngx.shared.test
    local tag = args().tag or "c"
    reply({ overlaps = dict:get(tag .. ":overlaps") or 0, stale = dict:get(tag .. ":stale") or 0,
            done = dict:get(tag .. ":done") or 0, inside = dict:get(tag .. ":inside") or 0 })
end

--- Auto-renew through ngx.timer: a section longer than the TTL keeps the lock,
-- and its token advances; a contender meanwhile finds it held.
function app.renew()
    guarded(function(a)
        local st = store_for(a)
        local ttl, hold = tonumber(a.ttl) or 1.5, tonumber(a.hold) or 4
        local l = assert(st:lock(a.key, { ttl = ttl, auto_renew = true, timeout = 5 }))
        local first = l:token()
        local tokens = { first }
        local contender
        local t0 = ngx.now()
        while ngx.now() - t0 < hold do
            ngx.sleep(0.25)
            ngx.update_time()
            local t = l:token()
            if t ~= tokens[#tokens] then tokens[#tokens + 1] = t end
            if contender == nil and ngx.now() - t0 > ttl * 1.5 then
                local other, err, code = st:lock(a.key, { timeout = 0 })
                contender = { got = other ~= nil, err = err, code = code }
                if other then other:release() end
            end
        end
        local value = st:get(a.key)
        local r = { first = first, last = l:token(), tokens = tokens, held = l:is_held(),
                    contender = contender, owner_matches = type(value) == "table"
                        and value.Owner == l.owner, valid_in = l:valid_until() - ngx.time() }
        r.release = { l:release() }
        local _, left = st:get(a.key)
        r.left = left
        reply(r)
    end)
end

--- A lease taken over while auto-renewed: the timer finds it lost, and the
-- next call into the library marks the lock lost and calls on_lost.
function app.renew_lost()
    guarded(function(a)
        local st = store_for(a)
        local ttl = tonumber(a.ttl) or 1.5
        local hooked = {}
        local l
        l = assert(st:lock(a.key, { ttl = ttl, auto_renew = true, timeout = 5,
            on_lost = function(lk, why) hooked[#hooked + 1] = { why = why, same = lk == l } end }))
        local _, index = st:get(a.key)
        -- a foreign writer replaces the lease (as a takeover would)
        local ok, thief_index = st:put(a.key, { ExpiresAt = "2999-01-01T00:00:00.0000000Z",
            Owner = "thief" }, index)
        ngx.sleep(ttl / 3 + 1)
        local hooks_before = #hooked     -- the timer never calls the hook itself
        local held = l:is_held()         -- a call into the library: the loss lands here
        local r = { stolen = ok, hooks_before = hooks_before, held = held, hooked = hooked,
                    release = { l:release() } }
        r.cleanup = { st:delete(a.key, thief_index) }
        reply(r)
    end)
end

--- with_lock releases when the section raises, with and without auto-renew.
function app.with_lock_error()
    guarded(function(a)
        local st = store_for(a)
        local r = {}
        for _, renew in ipairs({ false, true }) do
            local ok, err = pcall(st.with_lock, st, a.key, { timeout = 5, ttl = 3,
                auto_renew = renew }, function() error("boom in the section") end)
            local _, index = st:get(a.key)
            local again = st:lock(a.key, { timeout = 0 })
            r[#r + 1] = { raised = not ok, err = tostring(err), left = index,
                          again = again ~= nil, again_release = again and again:release() }
        end
        reply(r)
    end)
end

--- TLS through cosockets against the RavenDB emulator's HTTPS nodes
-- (client certificate required): arguments url, db, cert, key.
function app.tls()
    guarded(function(a)
        local r = {}
        local function try(name, tls)
            local st, err, code = cmpxchg.open(a.url, { database = a.db, tls = tls, timeout = 5 })
            if st then
                local ok, index = st:put("tls/" .. name, name, 0)
                local value = st:get("tls/" .. name)
                if ok then st:delete("tls/" .. name, index) end
                st:close()
                r[name] = { ok = ok, value = value }
            else
                r[name] = { err = err, code = code }
            end
        end
        try("verified", { cert = a.cert, key = a.key })
        try("unverified", { cert = a.cert, key = a.key, verify = false })
        try("no_cert", { verify = false })
        try("with_ca", { ca = a.ca, cert = a.cert, key = a.key })
        reply(r)
    end)
end

--- The cosocket transport itself, against this nginx: chunked and sized
-- replies, one too large to read, a read timeout, a refused connection.
function app.transport()
    guarded(function()
        local http = require("cmpxchg.transport.ngx").new({ connect_timeout = 2 })
        local base = "http://127.0.0.1:" .. ngx.var.server_port
        local r = {}
        local status, body, headers = http:request("GET", base .. "/chunked?n=5", nil, nil, 5)
        r.chunked = { status = status, body = body, te = headers and headers["transfer-encoding"] }
        status, body = http:request("POST", base .. "/chunked?n=0", "x", nil, 5)
        r.empty = { status = status, body = body }
        status, body = http:request("PUT", base .. "/ping", "{}",
            { ["Content-Type"] = "application/json" }, 5)
        r.sized = { status = status, body = body and cjson.decode(body) }
        -- a write on the pooled connection, read by the server, which then
        -- closes without a reply: never sent again by the transport itself
        local id = ngx.var.request_id or tostring(ngx.now())
        status, body, headers = http:request("POST", base .. "/dropcount?id=" .. id, "{}",
            { ["Content-Type"] = "application/json" }, 5)
        r.dropped = { status = status, err = body, code = headers,
                      copies = ngx.shared.test:get("drop:" .. id) }
        local unsent
        status, body, headers, unsent = http:request("GET", base .. "/slow?s=2", nil, nil, 0.3)
        r.timeout = { status = status, err = body, code = headers, unsent = unsent }
        status, body, headers, unsent = http:request("GET", "http://127.0.0.1:1/", nil, nil, 2)
        r.refused = { status = status, err = body, code = headers, unsent = unsent }
        status, body, headers = http:request("GET", base .. "/huge", nil, nil, 2)
        r.huge = { status = status, err = body, code = headers }
        r.bad_header = { pcall(http.request, http, "GET", base .. "/ping", nil,
            { ["X-A"] = "1\r\nX-B: 2" }, 2) }
        r.bad_header[2] = tostring(r.bad_header[2])
        reply(r)
    end)
end

--- Counts the request under its `id`, then closes the connection without a
-- reply (nginx's 444): a server that read a write and died before answering.
function app.dropcount()
    ngx.req.read_body()
    ngx.shared.test:incr("drop:" .. tostring(args().id), 1, 0)
    ngx.exit(444)
end

function app.slow()
    ngx.sleep(tonumber(args().s) or 1)
    ngx.say("{}")
end

--- A reply that says it is 300 MB long (and is not): refused before any read.
function app.huge()
    ngx.header["Content-Length"] = 300000000
    ngx.send_headers()
    ngx.print("{}")
    ngx.flush(true)
end

function app.chunked()
    ngx.req.read_body()
    local n = tonumber(args().n) or 3
    for i = 1, n do
        ngx.print(("part%d;"):format(i))
        ngx.flush(true)         -- no Content-Length: chunked on HTTP/1.1
    end
end

--- One case of the hostile-server suite (spec/support/hostile_run.lua) through
-- cosockets: argument `case`, its JSON.
function app.hostile()
    guarded(function(a)
        reply(require("spec.support.hostile_run").case(cjson.decode(a.case)))
    end)
end

--[[ Phases that cannot yield ]]

--- What one call does here: "ok", or the error it raised or returned.
local function attempt(fn)
    local ok, a, b = pcall(fn)
    if not ok then return { raised = tostring(a) } end
    if a == nil then return { returned = tostring(b) } end
    return { ok = true }
end

--- Tries, in a phase that cannot yield: opening the target, a lock that
-- would wait, and (embedded) a lock that would not. Results go to the shared
-- dict under the request's `id`.
local function probe_target(target, opts, key)
    local r = {}
    local st
    r.open = attempt(function()
        local err
        st, err = cmpxchg.open(target, opts)
        return st, err
    end)
    if st then
        r.lock_wait = attempt(function() return st:lock(key, { timeout = 5 }) end)
        r.lock_now = attempt(function()
            local l, err = st:lock(key, { timeout = 0 })
            if l then l:release() end
            return l, err
        end)
        st:close()
    end
    return r
end

function app.probe(phase)
    local a = args()
    local target, opts = target_of(a)
    local r = probe_target(target, opts, a.key)
    r.phase = ngx.get_phase()
    r.expected = phase
    ngx.shared.test:set("probe:" .. a.id, cjson.encode(r))
    return ""
end

function app.probe_result()
    ngx.say(ngx.shared.test:get("probe:" .. args().id) or "null")
end

local init_results = {}

--- In init_by_lua (the master): the embedded store works without waiting;
-- a wait or a server store raises.
function app.init()
    init_results.init = probe_target(":memory:", nil, "init/lock")
    init_results.init.server = attempt(function()
        return cmpxchg.open("http://127.0.0.1:1", { database = "x" })
    end)
    init_results.init.phase = ngx.get_phase()
    -- the master takes random ids (filling the core's pool) before it forks
    init_results.init.uuid = require("cmpxchg.core").uuid()
end

--[[ The leader job (spec/integration/nginx_leader_spec.lua): /job/config puts
a job's settings in the shared dict; every worker looks for them every 0.1 s
(a timer started in init_worker, as a user starts cmpxchg.leader_job) and
starts the job once per configuration. Each run appends "TAG PID TOKEN TIME"
to the log file the configuration names. ]]

local job, job_id

local function append(path, line)
    local f = assert(io.open(path, "a"))
    f:setvbuf("full")
    f:write(line, "\n")        -- one write(2) of a short line: appends do not interleave
    f:close()
end

local function start_job()
    local text = ngx.shared.test:get("job:config")
    if not text then return end
    local c = cjson.decode(text)
    if c.id == job_id then return end
    if job then job:stop() end
    job_id = c.id
    local target, opts = target_of(c)
    job = cmpxchg.leader_job(c.name, {
        store = function() return cmpxchg.open(target, opts) end,
        every = c.every, ttl = c.ttl, retry = c.retry,
        id = ("%s:%d"):format(c.tag, ngx.worker.pid()),
    }, function(e)
        append(c.log, ("%s %d %d %.6f"):format(c.tag, ngx.worker.pid(), e:token(), ngx.now()))
    end)
end

function app.job_config()
    local a = args()
    ngx.shared.test:set("job:config", cjson.encode({ id = a.id, name = a.name, target = a.target,
        db = a.db, every = tonumber(a.every), ttl = tonumber(a.ttl), retry = tonumber(a.retry),
        tag = a.tag, log = a.log }))
    reply({ ok = true, pid = ngx.worker.pid() })
end

function app.init_worker()
    assert(ngx.timer.every(0.1, function(premature)
        if not premature then
            local ok, err = pcall(start_job)
            if not ok then ngx.log(ngx.ERR, "the test's leader job: ", err) end
        end
    end))
    init_results.init_worker = probe_target(":memory:", nil, "init/lock")
    init_results.init_worker.server = attempt(function()
        return cmpxchg.open("etcd://127.0.0.1:1")
    end)
    init_results.init_worker.phase = ngx.get_phase()
    -- each worker's first id after the fork: none may repeat another's
    ngx.shared.test:set("uuid:" .. ngx.worker.id(), require("cmpxchg.core").uuid())
end

function app.init_result()
    init_results.worker_uuids = {}
    for id = 0, ngx.worker.count() - 1 do
        init_results.worker_uuids[id + 1] = ngx.shared.test:get("uuid:" .. id)
    end
    reply(init_results)
end

return app
