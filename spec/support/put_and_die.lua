-- Child process: one put, reports its result, then SIGKILLs itself at once,
-- before any orderly shutdown could flush anything.
--   lua put_and_die.lua TARGET KEY VALUE
local core = require "cmpxchg.core"

local store = assert(require("spec.helpers").open_target(arg[1]))
local ok, index = store:put(arg[2], arg[3], 0)
io.stdout:write(("%s %s\n"):format(tostring(ok), tostring(index)))
io.stdout:flush()
os.execute("kill -KILL " .. core.pid())
os.exit(3)      -- not reached
