-- Child process of etcd_watch_spec: waits on an etcd cluster and counts every
-- request it sends (spec/support/counting_transport.lua: an HTTP request is
-- one, a watch stream is one however long it stays open).
-- After each request and each acquisition it rewrites COUNTFILE with
-- "requests N streams S held H", so
-- that the spec can see how a wait costs while it lasts.
--   lua etcd_watch_waiter.lua ENDPOINTS PREFIX KEY KIND WATCH COUNTFILE ROUNDS HOLD [TIMEOUT]
-- KIND: lock | fair | sem (a semaphore of 1 permit); WATCH: 1 or 0 (the store's
-- watch option); TIMEOUT: each acquisition's (default 60 s). ROUNDS acquisitions, each held HOLD seconds; every one is
-- logged on stdout as "acquired T0 waited W writes N T1" (the section,
-- monotonic; N the lock's writes; W
-- the acquisition's own waited) or
-- "failed CODE", then a last line "requests N streams S rounds R".
local core = require "cmpxchg.core"

local requests, streams, held = 0, 0, 0
local countfile = arg[6]

local function tell()
    local tmp = countfile .. ".tmp"
    local f = assert(io.open(tmp, "w"))
    f:write(("requests %d streams %d held %d\n"):format(requests, streams, held))
    f:close()
    assert(os.rename(tmp, countfile))
end

require("spec.support.counting_transport").install(function(what)
    requests = requests + 1
    if what == "stream" then streams = streams + 1 end
    tell()
end)

local cmpxchg = require "cmpxchg"
local endpoints = {}
for url in arg[1]:gmatch("[^,]+") do endpoints[#endpoints + 1] = url end
local key, kind, watch = arg[3], arg[4], arg[5] == "1"
local rounds, hold = tonumber(arg[7]), tonumber(arg[8])
local store
for _ = 1, 50 do     -- the cluster may be electing a leader right now
    store = cmpxchg.open(endpoints, { database = arg[2], timeout = 2, watch = watch })
    if store then break end
    core.sleep(0.1)
end
assert(store, "cannot open the store")
-- polling as often as it may, so that a poll is told from a watch in a short hold;
-- queue entries (fair, and the chain of lock waiters) renewed every 20 s, not
-- within a test's hold: their renewals are the queue's cost, not the wait's
local opts = { ttl = 30, timeout = tonumber(arg[9]) or 60, backoff_max = 0.05, waiter_ttl = 60,
               fair = kind == "fair" or nil }
local sem = kind == "sem" and store:semaphore(key, 1) or nil

local done = 0
for _ = 1, rounds do
    local l, err, code
    if sem then l, err, code = sem:acquire(opts) else l, err, code = store:lock(key, opts) end
    if l then
        local t0 = core.monotime()
        held = held + 1
        tell()
        io.stdout:write(("acquired %.6f waited %.3f writes %d"):format(t0, l.waited, l.writes))
        io.stdout:flush()
        if hold > 0 then core.sleep(hold) end
        io.stdout:write((" %.6f\n"):format(core.monotime()))
        io.stdout:flush()
        assert(l:release())
        done = done + 1
    else
        io.stdout:write(("failed %s %s\n"):format(code, (tostring(err):gsub("%s", "_"))))
        io.stdout:flush()
    end
end
store:close()
io.stdout:write(("requests %d streams %d rounds %d\n"):format(requests, streams, done))
