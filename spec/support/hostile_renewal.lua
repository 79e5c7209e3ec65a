--- A child process of spec/integration/hostile_renewal_spec.lua: takes an
-- auto-renewed lock on a RavenDB whose renewal replies are gzip bombs
-- (hostile_server.js's rdb_renew_bomb), waits until the renewal thread gives
-- the lease up, and prints as JSON what happened and how much this process's
-- resident memory grew at its peak (the renewal thread's included).
--   lua hostile_renewal.lua URL
local cjson = require "cjson"
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"

local function status_kb(field)
    local f = assert(io.open("/proc/self/status"))
    local text = f:read("*a")
    f:close()
    return tonumber(text:match(field .. ":%s*(%d+)"))
end

collectgarbage("collect")
local f = assert(io.open("/proc/self/clear_refs", "w"))
f:write("5")
f:close()
local before = status_kb("VmRSS")
local started = core.monotime()
local st = assert(cmpxchg.open(arg[1], { database = "db", timeout = 10 }))
local lost
local l = assert(st:lock("k", { ttl = 10, auto_renew = true,
    on_lost = function(_, why) lost = why end }))
local deadline = core.monotime() + 30
while l:is_held() and core.monotime() < deadline do core.sleep(0.05) end
l:is_held()         -- the loss reaches on_lost at a call into the lock
local held = l:is_held()
st:close()
io.write(cjson.encode({ held = held, lost = lost, elapsed = core.monotime() - started,
    grew_mb = (status_kb("VmHWM") - before) / 1024 }), "\n")
