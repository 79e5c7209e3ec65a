-- Child process: takes lock KEY on TARGET with a TTL, says "held TOKEN",
-- waits DELAY seconds, releases it and says "released WALLTIME OK".
--   lua release_later.lua TARGET KEY TTL DELAY
local core = require "cmpxchg.core"

local target, key, ttl, delay = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])
local store = assert(require("spec.helpers").open_target(target))
local lock = assert(store:lock(key, { ttl = ttl, timeout = 10 }))
io.stdout:write(("held %d\n"):format(lock:token()))
io.stdout:flush()
core.sleep(delay)
local ok = lock:release()
io.stdout:write(("released %.6f %s\n"):format(core.time(), tostring(ok)))
io.stdout:flush()
store:close()
