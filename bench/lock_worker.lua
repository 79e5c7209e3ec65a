--- One contender of the lock benchmark. Until DURATION seconds have passed it
-- takes the lock, holds it HOLD seconds, releases it and pauses a random 0..GAP
-- seconds; every round is one line "REQUESTED ACQUIRED RELEASED" (epoch
-- seconds: RELEASED is taken just before the release is sent), then a last line
-- "requests N rounds R": N counts what went to the store (HTTP requests on the
-- server backends, store calls, i.e. SQLite transactions, on the embedded one).
--   lua5.4 bench/lock_worker.lua TARGET DATABASE KEY DURATION HOLD GAP [READY GO] [cpath]
-- With BENCH_FAIR=1 the lock is taken with fair = true; with BENCH_WATCH=0 an etcd store
-- polls (watch = false).
--   BENCH_HOLD_BIN=build/bench/hold lua5.4 bench/lock_worker.lua etcdctl ENDPOINTS KEY DURATION
--       HOLD GAP [READY GO]
-- The second form is the reference: `etcdctl lock KEY $BENCH_HOLD_BIN ...` per round
-- (bench/hold.c stamps the section; etcdctl releases when it exits).
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

local core = require "cmpxchg.core"

local target, database, key = arg[1], arg[2], arg[3]
local duration, hold, gap = tonumber(arg[4]), tonumber(arg[5]), tonumber(arg[6])
local ready, go = arg[7], arg[8]
assert(target and key and duration and hold and gap, "see the usage in bench/lock_worker.lua")
math.randomseed(core.pid(), math.floor(core.time() * 1e6))

local function wait_go()
    if not ready then return end
    assert(io.open(ready, "w")):close()
    while not io.open(go, "r") do core.sleep(0.002) end
end

local out = {}
local deadline

if target == "etcdctl" then
    local hold_bin, log = assert(os.getenv("BENCH_HOLD_BIN"), "BENCH_HOLD_BIN"), os.tmpname()
    wait_go()
    deadline = core.monotime() + duration
    local rounds = 0
    while core.monotime() < deadline do
        local requested = core.time()
        local ok = os.execute(("ETCDCTL_API=3 exec etcdctl --endpoints=%s lock %s %s %s %s %.6f")
            :format(database, key, hold_bin, hold, log, requested))
        assert(ok, "etcdctl lock failed")
        rounds = rounds + 1
        if gap > 0 then core.sleep(math.random() * gap) end
    end
    for line in io.lines(log) do out[#out + 1] = line end
    os.remove(log)
    out[#out + 1] = ("requests %d rounds %d"):format(0, rounds)
    io.write(table.concat(out, "\n"), "\n")
    return
end

local cmpxchg = require "cmpxchg"

-- count what reaches the store: HTTP requests, or store calls on the embedded file
local requests = 0
-- (spec/support/counting_transport.lua: a watch stream is one request)
require("spec.support.counting_transport").install(function() requests = requests + 1 end)
local embedded = not target:find("^%a+://")
if embedded then
    -- the backend's calls, one SQLite transaction each: locks call the
    -- backend, not the store's methods
    local methods = require "cmpxchg.embedded"
    for _, name in ipairs({ "put", "get", "delete", "get_many", "list", "transaction" }) do
        local f = methods[name]
        methods[name] = function(...)
            requests = requests + 1
            return f(...)
        end
    end
end

local fair = os.getenv("BENCH_FAIR") == "1" or nil
local st = assert(cmpxchg.open(target, { database = database ~= "-" and database or nil,
    watch = os.getenv("BENCH_WATCH") ~= "0" }))
st:get(key)             -- connected
wait_go()
requests = 0
deadline = core.monotime() + duration
local rounds = 0
while core.monotime() < deadline do
    local requested = core.time()
    local l = assert(st:lock(key, { ttl = 10, timeout = 60, fair = fair }))
    local acquired = core.time()
    core.sleep(hold)
    local released = core.time()
    assert(l:release())
    rounds = rounds + 1
    out[#out + 1] = ("%.6f %.6f %.6f"):format(requested, acquired, released)
    if gap > 0 then core.sleep(math.random() * gap) end
end
st:close()
out[#out + 1] = ("requests %d rounds %d"):format(requests, rounds)
io.write(table.concat(out, "\n"), "\n")
