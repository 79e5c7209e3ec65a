-- Inside nginx, the waiters of one worker for one key coalesce behind one of
-- them (lua/cmpxchg/coalesce.lua): the requests they send to the server are
-- counted by the test app (spec/support/nginx/coalesce_app.lua, through a
-- wrapped cosocket transport), never timed. Each waiting request insists on
-- one worker (the others answer at once and the spec sends more), and each
-- is a curl of its own, so that one can be aborted by killing its curl.
local cjson = require "cjson"
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"
local etcd_harness = require "spec.support.etcd_harness"
local helpers = require "spec.helpers"
local raven_harness = require "spec.support.ravendb_harness"

local sh, q = helpers.sh, helpers.shell_quote

if os.getenv("CMPXCHG_SKIP_NGINX") == "1" then
    describe("coalescing waiters inside nginx", function()
        pending("runs in the plain pass only (nginx loads the uninstrumented LuaJIT build)")
    end)
    return
end

sh("scripts/nginx-test-server start")
local base = sh("scripts/nginx-test-server url")

local N = 40                    -- waiting requests of one worker

local function escape(s)
    return (tostring(s):gsub("[^%w%-%._~/]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local function url_of(path, params)
    local parts = {}
    for k, v in pairs(params) do parts[#parts + 1] = k .. "=" .. escape(v) end
    table.sort(parts)
    return base .. path .. "?" .. table.concat(parts, "&")
end

--- One GET on a connection of its own (curl: a fresh connection may land on
-- either worker): the decoded lines of the reply.
local function get(path, params)
    local text = sh(("curl -s --max-time 60 %s"):format(q(url_of(path, params))))
    local lines = {}
    for l in text:gmatch("[^\n]+") do lines[#lines + 1] = cjson.decode(l) end
    return lines
end

local counter = 0
local function fresh(name)
    counter = counter + 1
    return ("%s-%d-%d"):format(name, core.pid(), counter)
end

local running = {}              -- every curl started here, killed at the end of each test

--- A GET left running in a curl of its own: {pid, file}.
local function launch(path, params)
    local file = os.tmpname()
    local p = assert(io.popen(("curl -s -N --max-time 150 %s -o %s >/dev/null 2>&1 & echo $!")
        :format(q(url_of(path, params)), q(file))))
    local h = { pid = assert(tonumber(p:read("*l"))), file = file }
    p:close()
    running[#running + 1] = h
    return h
end

--- The decoded lines a launched GET got so far.
local function lines_of(h)
    local f = io.open(h.file)
    local text = f and f:read("*a") or ""
    if f then f:close() end
    local lines = {}
    for l in text:gmatch("([^\n]*)\n") do lines[#lines + 1] = cjson.decode(l) end
    return lines
end

local function finish_all()
    for _, h in ipairs(running) do
        helpers.kill(h.pid)
        os.remove(h.file)
    end
    running = {}
end

local worker                    -- the pid of the worker the waiters go to

local function state(tag, ids)
    local list = {}
    for id in pairs(ids or {}) do list[#list + 1] = id end
    return get("/coal/state", { tag = tag, ids = table.concat(list, ",") })[1]
end

--- The holder: a request of `worker` that holds p.key until released.
local function hold(p)
    for _ = 1, 50 do
        local h = launch("/coal/hold", { target = p.target, db = p.db, key = p.key, tag = p.tag,
            worker = worker, coalesce = p.coalesce, watch = p.watch })
        local first = helpers.wait_until(function() return lines_of(h)[1] end, 30,
            "the holder's first line")
        if first.landed == "held" then return h end
        assert.equal("wrong", first.landed, cjson.encode(first))
    end
    error("no holder landed on worker " .. worker)
end

--- `n` waiters of `worker` on p.key (p: the query of each): id -> handle.
local function admit(p, n)
    local handles, id = {}, 0
    for _ = 1, 20 do
        local batch = {}
        local admitted = 0
        for _, h in pairs(handles) do
            if lines_of(h)[1].landed == "admitted" then admitted = admitted + 1 end
        end
        if admitted >= n then break end
        for _ = 1, (n - admitted) * 2 + 2 do
            id = id + 1
            local params = { tag = p.tag, id = id, n = n, worker = worker }
            for k, v in pairs(p) do params[k] = params[k] or v end
            local h = launch("/coal/wait", params)
            handles[id], batch[#batch + 1] = h, h
        end
        helpers.wait_until(function()
            for _, h in ipairs(batch) do
                if not lines_of(h)[1] then return false end
            end
            return true
        end, 60, "the first lines of the waiters")
    end
    local mine = {}
    local count = 0
    for i, h in pairs(handles) do
        if lines_of(h)[1].landed == "admitted" then mine[tostring(i)], count = h, count + 1 end
    end
    assert.equal(n, count, "waiters admitted on worker " .. worker)
    return mine
end

--- The coalesce groups left in `worker` (none once its waiters are gone).
local function groups_left()
    for _ = 1, 100 do
        local r = get("/coal/groups", { worker = worker })[1]
        if r.landed == "here" then return r.groups end
    end
    error("no request landed on worker " .. worker)
end

local backends = {
    ravendb = function()
        local server = raven_harness.server()
        return { target = table.concat(server.urls, ","),
                 db = raven_harness.create_database(server) }
    end,
    etcd = function()
        local cluster = etcd_harness.cluster()
        return { target = table.concat(cluster.endpoints, ","), db = etcd_harness.fresh_prefix() }
    end,
}

local function params(backend, extra)
    local p = backends[backend]()
    p.tag, p.key = fresh("coal"), fresh("coal/key")
    for k, v in pairs(extra or {}) do p[k] = v end
    return p
end

--- Holder, n waiters that all wait, `window` seconds more (the app's clock)
-- after the last one waits, a release by the holder, everyone served:
-- the final state and the waiters' handles.
local function scenario(p, n, window)
    hold(p)
    local waiters = admit(p, n)
    helpers.wait_until(function() return state(p.tag).waiting == n end, 60, "everyone waiting")
    helpers.wait_until(function()
        local s = state(p.tag)
        return s.now - s.t_all >= window
    end, window + 60, "the window")
    get("/coal/release", { tag = p.tag })
    helpers.wait_until(function()
        local s = state(p.tag)
        return (s.acquired or 0) + (s.failed or 0) == n
    end, 120, "every waiter served")
    return state(p.tag), waiters
end

--- Requests sent by the waiters while they waited, per second of waiting
-- (from the first one's wait to the release).
local function rate(s)
    return (s.sent_release or 0) / (s.t_release - s.t_first)
end

describe("coalescing waiters inside nginx", function()
    setup(function()
        worker = assert(get("/ping", {})[1].pid)
    end)

    after_each(finish_all)

    for _, backend in ipairs({ "ravendb", "etcd" }) do
        it(("40 waiters of one worker cost %s what one does (at least 10x fewer requests per "
            .. "second of waiting than with coalesce = false)"):format(backend), function()
            local seen = {}
            for _, coalesce in ipairs({ "true", "false" }) do
                local p = params(backend, { coalesce = coalesce, bmin = 0.05, bmax = 0.3 })
                local s = scenario(p, N, 2)
                assert.equal(0, s.failed or 0)
                assert.equal(N, s.acquired)
                assert.equal(0, s.overlaps or 0)
                seen[coalesce] = { rate = rate(s), sent = s.sent_release or 0,
                                   seconds = s.t_release - s.t_first }
            end
            print(("\n[coalesce, %s, %d waiters] requests while waiting: %d in %.1f s with "
                .. "coalescing, %d in %.1f s without"):format(backend, N, seen["true"].sent,
                seen["true"].seconds, seen["false"].sent, seen["false"].seconds))
            assert.is_true(seen["false"].sent > 0)
            assert.is_true(seen["false"].rate >= 10 * seen["true"].rate,
                ("%.1f/s with, %.1f/s without"):format(seen["true"].rate, seen["false"].rate))
            assert.equal(0, groups_left())
        end)
    end

    for _, backend in ipairs({ "ravendb", "etcd" }) do
        it(("a release by a request of the same worker wakes the next waiter at once, and all 40 "
            .. "acquire one at a time (backoff 30 s, %s%s)"):format(backend,
                backend == "etcd" and " polling" or ""), function()
            local p = params(backend, { bmin = 30, bmax = 30, timeout = 60, ttl = 60,
                                        watch = backend == "etcd" and "false" or nil })
            hold(p)
            local waiters = admit(p, N)
            helpers.wait_until(function() return state(p.tag).waiting == N end, 60, "all waiting")
            get("/coal/release", { tag = p.tag })
            -- a waiter that waited out its backoff would look 30 s after its first attempt
            helpers.wait_until(function()
                local s = state(p.tag)
                return (s.acquired or 0) + (s.failed or 0) == N
            end, 25, "every waiter served, woken by the releases")
            local s = state(p.tag)
            assert.equal(N, s.acquired)
            assert.equal(0, s.overlaps or 0)
            assert.is_true(s.t_last - s.t_release < 20, "served within 20 s of the release")
            -- each one's own record: acquired, tokens all different
            local tokens = {}
            for _, h in pairs(waiters) do
                local r = helpers.wait_until(function() return lines_of(h)[2] end, 10, "a result")
                assert.is_true(r.acquired, cjson.encode(r))
                assert.is_nil(tokens[r.token])
                tokens[r.token] = true
            end
            assert.equal(0, groups_left())
        end)
    end

    it("a request aborted while it is the active member (and one while parked): a parked "
        .. "one takes over and all the others acquire", function()
        local n = 10
        local p = params("ravendb", { bmin = 0.05, bmax = 0.2 })
        hold(p)
        local waiters = admit(p, n)
        helpers.wait_until(function() return state(p.tag).waiting == n end, 60, "all waiting")
        local first
        helpers.wait_until(function()
            local s = state(p.tag, waiters)
            first = s.poller
            return first and s.by[first] >= 3
        end, 30, "the active member polling")
        local s = state(p.tag, waiters)
        for id, sent in pairs(s.by) do
            if id ~= first then assert.equal(0, sent, "waiter " .. id .. " sent requests") end
        end
        -- a parked one goes first: it leaves the semaphore's queue, nobody waits for it
        local parked
        for id in pairs(waiters) do
            if id ~= first then parked = id end
        end
        helpers.kill(waiters[parked].pid)
        helpers.kill(waiters[first].pid)
        local second
        helpers.wait_until(function()
            local now = state(p.tag, waiters)
            second = now.poller
            return second ~= first and now.by[second] >= 3
        end, 60, "a parked waiter taking over")
        get("/coal/release", { tag = p.tag })
        helpers.wait_until(function()
            local now = state(p.tag)
            return (now.acquired or 0) + (now.failed or 0) == n - 2
        end, 60, "the others served")
        s = state(p.tag)
        assert.equal(n - 2, s.acquired)
        assert.equal(0, s.overlaps or 0)
        assert.is_nil(lines_of(waiters[first])[2])
        assert.is_nil(lines_of(waiters[parked])[2])
        helpers.wait_until(function() return groups_left() == 0 end, 30, "no group left")
    end)

    describe("on etcd, a waiter inside nginx waits by a watch over its cosocket stream", function()
        --- One waiter (any worker) on a key the test holds for `window` seconds
        -- of the app's clock after it waits: requests sent, seconds to acquire.
        local function one(extra, window)
            local p = params("etcd", extra)
            local urls = {}
            for url in p.target:gmatch("[^,]+") do urls[#urls + 1] = url end
            local st = assert(cmpxchg.open(urls, { database = p.db }))
            local l = assert(st:lock(p.key, { ttl = 60, timeout = 5 }))
            p.n, p.id = 1, "1"
            local h = launch("/coal/wait", p)
            helpers.wait_until(function() return state(p.tag).waiting == 1 end, 30, "waiting")
            helpers.wait_until(function()
                local s = state(p.tag)
                return s.now - s.t_first >= window
            end, window + 60, "the window")
            local sent = state(p.tag).sent or 0
            local t0 = core.monotime()
            assert(l:release())
            local r = helpers.wait_until(function() return lines_of(h)[2] end, 60, "acquired")
            st:close()
            assert.is_true(r.acquired, cjson.encode(r))
            return sent, core.monotime() - t0
        end

        it("wakes on a release from outside nginx, with backoff 30 s, and sends bounded "
            .. "requests; watch = false polls", function()
            -- a wait's requests: the create it lost, its queue entry (the write, the
            -- listing of the queue, up to two lease grants: the entry's and the one it
            -- offers for a hand-off), the watch and the read of what the watch came too
            -- late to see; then only the entry's renewal, every waiter_ttl/3 (5/3 s)
            local window = 6
            local sent, took = one({ bmin = 30, bmax = 30, timeout = 60 }, window)
            assert.is_true(took < 20, ("acquired %.1f s after the release"):format(took))
            local bound = 7 + math.ceil(window / (5 / 3)) + 1
            assert.is_true(sent <= bound, ("%d requests while waiting (at most %d)")
                :format(sent, bound))
            local polled = one({ bmin = 0.05, bmax = 0.2, watch = "false" }, window)
            print(("\n[coalesce, etcd] one waiter, 6 s: %d requests by watch, %d polling")
                :format(sent, polled))
            assert.is_true(polled >= 3 * math.max(sent, 1))
        end)
    end)
end)
