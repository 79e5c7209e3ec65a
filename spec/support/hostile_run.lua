--- One case of the hostile-server suite, run where the library runs: in a
-- child Lua process for the libcurl transport (spec/support/hostile_client.lua)
-- and in an nginx handler for cosockets (spec/support/nginx/app.lua). It opens
-- a store on the case's misbehaving server, makes one call, and reports what
-- came back, how long open and call took, and how much this process's
-- resident memory grew meanwhile (its peak, VmHWM, reset first through
-- /proc/self/clear_refs). The cases: spec/support/hostile_cases.lua.
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"

local hostile_run = {}

local MB = 1024 * 1024

-- the calls a case can make, by name
local OPS = {
    get = function(st) return st:get("k") end,
    get_many = function(st) return st:get_many({ "k", "k2" }) end,
    list = function(st) return st:list("p/") end,
    list_all = function(st) return st:list("") end,     -- RavenDB's guard-skipping path
    put = function(st) return st:put("k", { n = 1 }, 0) end,
    put_big = function(st) return st:put("k", ("x"):rep(16 * MB), 0) end,
    delete = function(st) return st:delete("k", 5) end,
    lock = function(st)
        local l, err, code = st:lock("k", { timeout = 0, ttl = 30 })
        if not l then return nil, err, code end
        -- a lock that was granted must be releasable, whatever the server said
        return l:release()
    end,
}
hostile_run.OPS = OPS

local function status_kb(field)
    local f = io.open("/proc/self/status")
    if not f then return nil end
    local text = f:read("*a")
    f:close()
    return tonumber(text:match(field .. ":%s*(%d+)"))
end

--- Restarts the peak (VmHWM) at the current resident size, after a full
-- collection: what an earlier case left behind is not counted.
local function reset_peak()
    collectgarbage("collect")
    collectgarbage("collect")
    local f = assert(io.open("/proc/self/clear_refs", "w"))
    f:write("5")
    f:close()
    return status_kb("VmRSS")
end

--- case: {target =, database =, op =, timeout =, tls =, user =, password =}
-- -> {stage = "open"|op, ok =, returned = {...}, err =, code =, raised =,
--     elapsed = seconds, peak_mb = peak resident size in MB, grew_mb = its
--     growth, kept_mb = growth still there after the call, the store still open}
function hostile_run.case(case)
    local result = {}
    local before = reset_peak()
    local started = core.monotime()
    local ran, why = pcall(function()
        local opts = { database = case.database, timeout = case.timeout, tls = case.tls,
                       user = case.user, password = case.password }
        result.stage = "open"
        local st, err, code = cmpxchg.open(case.target, opts)
        if not st then
            result.err, result.code = err, code
            return
        end
        if not case.op then         -- the case is open itself, and it worked
            result.ok = true
            st:close()
            return
        end
        result.stage = case.op
        local a, b, c = OPS[case.op](st)
        if a == nil and type(b) == "string" then
            result.err, result.code = b, c
        else
            result.ok = true
            result.returned = { tostring(a), tostring(b), tostring(c) }
        end
        a, b, c = nil, nil, nil         -- luacheck: ignore (dropped before measuring)
        -- what the store still holds once the call is over (its connections' buffers)
        collectgarbage("collect")
        collectgarbage("collect")
        result.kept_mb = ((status_kb("VmRSS") or 0) - (before or 0)) / 1024
        st:close()
    end)
    result.elapsed = core.monotime() - started
    if not ran then result.raised = tostring(why) end
    result.peak_mb = (status_kb("VmHWM") or 0) / 1024
    result.grew_mb = result.peak_mb - (before or 0) / 1024
    return result
end

--- Shortens what a case reports for the test's messages.
function hostile_run.describe(r)
    return ("stage %s: %s (%s) raised=%s in %.2f s, +%.0f MB"):format(tostring(r.stage),
        tostring(r.err or (r.returned and table.concat(r.returned, ", "))), tostring(r.code),
        tostring(r.raised), r.elapsed or -1, r.grew_mb or -1)
end

return hostile_run
