-- Child process: takes lock KEY ROUNDS times. Inside each critical section it
-- increments a plain counter file (read, then write: an overlap loses an
-- update) and logs "token t_enter t_leave" on the shared monotonic clock.
--   lua contender.lua TARGET KEY ROUNDS LOGFILE COUNTERFILE
local core = require "cmpxchg.core"

local target, key, rounds, logfile, counterfile =
    arg[1], arg[2], tonumber(arg[3]), arg[4], arg[5]
local store = assert(require("spec.helpers").open_target(target))
local log = assert(io.open(logfile, "w"))

for _ = 1, rounds do
    local lock = assert(store:lock(key, { ttl = 10, timeout = 60 }))
    local t0 = core.monotime()
    local f = io.open(counterfile, "r")
    local n = f and tonumber(f:read("*a")) or 0
    if f then f:close() end
    core.sleep(0.0005)              -- widen the window an overlap would need
    f = assert(io.open(counterfile, "w"))
    f:write(tostring(n + 1))
    f:close()
    local t1 = core.monotime()
    log:write(("%d %.9f %.9f\n"):format(lock:token(), t0, t1))
    assert(lock:release())
end
log:close()
store:close()
