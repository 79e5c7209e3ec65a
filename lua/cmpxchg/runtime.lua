--- The runtime seam: clocks, sleeping and process identity.
-- Everything in the library that waits or reads a clock goes through here, so
-- that one place decides how to wait without blocking.
--
-- In plain Lua a wait is the core's nanosleep. Inside nginx (OpenResty's
-- lua-nginx-module) a wait is ngx.sleep, which yields the request's coroutine
-- to the event loop; in the phases where nothing may yield (init,
-- init_worker, set, header/body filter, log, balancer, ...) a call that would
-- wait or do network I/O raises at once instead of freezing the worker.
-- The clocks stay the core's clock_gettime in both: a few nanoseconds of CPU,
-- exact to the microsecond (ngx.now is cached per event-loop turn), and
-- CLOCK_MONOTONIC for lease lengths.
local core = require "cmpxchg.core"

local ngx = rawget(_G, "ngx")   -- rawget: no strict-mode error outside nginx
local in_nginx = type(ngx) == "table" and type(ngx.get_phase) == "function"
    and type(ngx.sleep) == "function"

local runtime = {
    monotime = core.monotime,   -- seconds, never jumps: for lease lengths
    time = core.time,           -- wall clock, epoch seconds: what others see
    uuid = core.uuid,
    hostname = core.hostname(),
    pid = core.pid,             -- read each time: a forked child is another process
    nginx = in_nginx,           -- true inside an nginx worker (or master)
}

--- The HTTP transport module of the server backends: cosockets inside
-- nginx (libcurl would block the worker), libcurl elsewhere.
function runtime.transport()
    return require(in_nginx and "cmpxchg.transport.ngx" or "cmpxchg.transport.curl")
end

--- A uniform random number in [0, 1) from the kernel's randomness: jitter
-- must differ between processes, and math.random is unseeded on Lua 5.1-5.3
-- and LuaJIT (every process draws the same numbers), and its state is copied
-- into every forked nginx worker.
function runtime.random()
    local u = core.uuid()       -- 48 random bits of it, ahead of the version digit
    return tonumber(u:sub(1, 8) .. u:sub(10, 13), 16) / 2^48
end

-- the phases whose handlers run in a coroutine that may yield (cosockets,
-- ngx.sleep); doc/openresty-notes.md §1
local CAN_YIELD = { rewrite = true, server_rewrite = true, access = true, content = true,
                    timer = true, ssl_cert = true, ssl_session_fetch = true,
                    preread = true }

-- what to tell a user who tried to wait where it cannot be done
local HINT = {
    init = "open stores and take locks in a request handler or an ngx.timer",
    init_worker = "run it in ngx.timer.at(0, fn) started from here",
}

--- The current ngx phase ("content", "log", ...), or "plain" outside nginx.
function runtime.phase()
    if not in_nginx then return "plain" end
    local ok, phase = pcall(ngx.get_phase)
    return ok and phase or "plain"
end

--- true when the caller may wait and do network I/O here.
function runtime.can_yield()
    if not in_nginx then return true end
    return CAN_YIELD[runtime.phase()] == true
end

--- Raises the library's error for "`what` needs to wait here, and cannot".
function runtime.cannot_wait(what)
    local phase = runtime.phase()
    local msg = ("cmpxchg: %s cannot run in the %s phase: nginx allows no waiting or "
        .. "network I/O in %s; %s"):format(what, phase, phase .. "_by_lua*",
        HINT[phase] or "call it from rewrite/access/content_by_lua* or an ngx.timer "
            .. "(ngx.timer.at(0, fn) works from this phase)")
    require("cmpxchg.check").raise(msg)
end

--- Raises unless the caller may wait (always fine outside nginx).
function runtime.check_yield(what)
    if in_nginx and not runtime.can_yield() then runtime.cannot_wait(what) end
end

if in_nginx then
    local ngx_sleep = ngx.sleep
    --- Sleeps `seconds`, yielding to nginx's event loop.
    function runtime.sleep(seconds)
        if not CAN_YIELD[runtime.phase()] then runtime.cannot_wait("a wait (ngx.sleep)") end
        -- nginx counts in milliseconds: a shorter wait would be ngx.sleep(0),
        -- a mere yield (and a warning on nginx builds without OpenResty's patch)
        ngx_sleep(math.max(seconds, 0.001))
    end
else
    runtime.sleep = core.sleep
end

return runtime
