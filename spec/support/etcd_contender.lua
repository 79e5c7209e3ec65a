-- Child process: takes a lock on an etcd cluster ROUNDS times (some attempts
-- may fail while the cluster loses its leader: each is logged either as
-- "held TOKEN T0 T1" or "failed CODE"), on the shared monotonic clock. With
-- GATE and BEFORE, it waits after its first BEFORE rounds until the file GATE
-- exists: the spec disturbs the cluster and then opens the gate, so that the
-- rest of the rounds meet the disturbance however fast or slow the machine.
--   lua etcd_contender.lua ENDPOINTS PREFIX ROUNDS LOGFILE HOLD_SECONDS [GATE BEFORE]
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"

local endpoints = {}
for url in arg[1]:gmatch("[^,]+") do endpoints[#endpoints + 1] = url end
local rounds, log = tonumber(arg[3]), assert(io.open(arg[4], "w"))
local store
for _ = 1, 50 do     -- the cluster may be electing a leader right now
    store = cmpxchg.open(endpoints, { database = arg[2], timeout = 2 })
    if store then break end
    core.sleep(0.1)
end
assert(store, "cannot open the store")

local gate, before = arg[6], tonumber(arg[7])

local function wait_for_gate()
    for _ = 1, 12000 do            -- 120 s at the most
        local f = io.open(gate)
        if f then f:close() return end
        core.sleep(0.01)
    end
    error("the gate " .. gate .. " never opened")
end

for round = 1, rounds do
    if gate and round == before + 1 then wait_for_gate() end
    local lock, err, code = store:lock("contended", { ttl = 10, timeout = 15 })
    if lock then
        local t0 = core.monotime()
        core.sleep(tonumber(arg[5]))
        local t1 = core.monotime()
        -- the critical section is [t0, t1] whatever the release says: a release
        -- that failed only leaves the lease to expire
        local ok, rerr = lock:release()
        log:write(("held %d %.9f %.9f\n"):format(lock:token(), t0, t1))
        if not ok then io.stderr:write("release: ", tostring(rerr), "\n") end
    else
        log:write(("failed %s %s\n"):format(code, (err:gsub("%s", "_"))))
    end
    log:flush()
end
log:close()
