-- Child process: takes lock KEY on TARGET with a TTL, says "held TOKEN PID",
-- then waits (at most 60 s) to be killed without ever releasing.
--   lua holder.lua TARGET KEY TTL
local core = require "cmpxchg.core"

local target, key, ttl = arg[1], arg[2], tonumber(arg[3])
local store = assert(require("spec.helpers").open_target(target))
local lock = assert(store:lock(key, { ttl = ttl, timeout = 10 }))
io.stdout:write(("held %d %d\n"):format(lock:token(), core.pid()))
io.stdout:flush()
local deadline = core.monotime() + 60
while core.monotime() < deadline do core.sleep(0.1) end
os.exit(3)
