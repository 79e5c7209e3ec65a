--- The runtime seam: clocks, sleeping and process identity.
-- Everything in the library that waits or reads a clock goes through here, so
-- that one place decides how to wait without blocking (ngx.sleep in nginx).
local core = require "cmpxchg.core"

local runtime = {
    monotime = core.monotime,   -- seconds, never jumps: for lease lengths
    time = core.time,           -- wall clock, epoch seconds: what others see
    sleep = core.sleep,
    uuid = core.uuid,
    pid = core.pid(),
    hostname = core.hostname(),
}

return runtime
