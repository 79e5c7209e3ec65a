--- One candidate of the election failover benchmark: campaigns for NAME with
-- a TTL-second leadership lease, appends "elected WALLTIME TOKEN PID" to LOG
-- (one write) the moment it leads (its on_elected), and then leads, its lease
-- renewed by the renewal thread, until it is killed (at most 300 s).
--   lua5.4 bench/election_worker.lua TARGET DATABASE NAME TTL LOG
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"

local target, database, name, ttl, log = arg[1], arg[2], arg[3], tonumber(arg[4]), arg[5]
assert(target and name and ttl and log, "see the usage in bench/election_worker.lua")

local st = assert(cmpxchg.open(target, { database = database ~= "-" and database or nil }))
local election = st:election(name, { ttl = ttl, on_elected = function(_, token)
    local f = assert(io.open(log, "a"))
    f:write(("elected %.6f %d %d\n"):format(core.time(), token, core.pid()))
    f:close()
end })
assert(election:campaign(300))
local deadline = core.monotime() + 300
while core.monotime() < deadline and election:is_leader() do core.sleep(0.05) end
os.exit(election:is_leader() and 0 or 2)
