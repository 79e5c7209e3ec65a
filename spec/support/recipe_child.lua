-- Child process of the recipes contract (spec/support/recipes_contract.lua):
--   lua recipe_child.lua permit TARGET NAME N TTL      takes a permit, says
--       "held TOKEN SLOT PID", then waits (at most 60 s) to be killed
--   lua recipe_child.lua fair TARGET KEY HOLD WAITER_TTL   says "pid PID", takes
--       KEY fairly, says "got TOKEN WALLTIME", holds HOLD s, releases, exits
--   lua recipe_child.lua lead TARGET NAME TTL          campaigns, says
--       "elected TOKEN PID", then leads until killed (at most 60 s)
local core = require "cmpxchg.core"
local helpers = require "spec.helpers"

local mode, target = arg[1], arg[2]
local store = assert(helpers.open_target(target))

local function say(fmt, ...)
    io.stdout:write(fmt:format(...), "\n")
    io.stdout:flush()
end

local function linger()
    local deadline = core.monotime() + 60
    while core.monotime() < deadline do core.sleep(0.1) end
    os.exit(3)
end

if mode == "permit" then
    local sem = store:semaphore(arg[3], tonumber(arg[4]), { ttl = tonumber(arg[5]) })
    local p = assert(sem:acquire({ timeout = 10 }))
    say("held %d %d %d", p:token(), p.slot, core.pid())
    linger()
elseif mode == "fair" then
    say("pid %d", core.pid())
    local l = assert(store:lock(arg[3], { fair = true, timeout = 30, ttl = 10,
        waiter_ttl = tonumber(arg[5]) }))
    say("got %d %.6f", l:token(), core.time())
    core.sleep(tonumber(arg[4]))
    assert(l:release())
    store:close()
elseif mode == "lead" then
    local e = store:election(arg[3], { ttl = tonumber(arg[4]), id = "child-" .. core.pid() })
    assert(e:campaign(20))
    say("elected %d %d", e:token(), core.pid())
    linger()
else
    error("unknown mode " .. tostring(mode))
end
