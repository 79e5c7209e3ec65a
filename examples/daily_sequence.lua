-- A sequence that hands out gap-free numbers, restarting at 1 each UTC day: invoice or
-- ticket numbers "2026-05-01 #1, #2, ...". One key holds the day and the last number
-- handed out, and every draw is a store:update of it: read, add one (or start again at
-- 1 on a new day), write back with the index read. When two processes draw at once,
-- only one write matches the index; the other is computed again from the winner's
-- value. So no number is handed out twice (a plain read-then-write would: both
-- readers see 16, both write 17) and none is skipped (nothing is reserved ahead).
--
-- A process whose clock is behind the store's day (at midnight, say) never moves the
-- sequence back to the day before, which would hand out that day's numbers again: it
-- draws from the day the store is on.
--
-- A write whose reply is lost (timeout, dropped connection) may have been applied.
-- Each draw writes its own id into the value, so reading the key back tells whether
-- the number is ours; only when another draw has overtaken it meanwhile is the
-- outcome unknown, and that is reported (exit 3): the one way a gap can appear.
--
--   lua5.4 examples/daily_sequence.lua [--store TARGET] [--database DB]
--                                      [--name NAME] [--count N] [--now EPOCH] [--go FILE]
--                                      [--think SECONDS]
-- TARGET: a store file, a RavenDB URL or an etcd URL (those need --database).
-- Prints one line per number drawn: "drew <NAME> <YYYY-MM-DD> #<n>", followed by
-- "(after N lost races)" when other processes' draws got in first. --now sets the
-- time the day is taken from (for trying out the day change). --go FILE: print
-- "ready (pid N)" once the store is open, and start drawing when FILE exists (at most
-- 60 s later), so that several processes can be started and then draw at once.
-- --think: time spent between reading the value and writing the next one (work a
-- real draw might do there), which makes concurrent draws race for certain.
-- Exit: 0 all drawn, 3 the store failed (or a draw's outcome is unknown).

-- run from the checkout without installing: prefer the in-tree build
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"

local finish = require("examples.flags").finish

local flags, bad = require("examples.flags").parse(arg, { store = "string",
    database = "string", name = "string", count = "number", now = "number",
    go = "string", think = "number" })
if not flags then finish(3, bad) end
local name = flags.name or "invoices"
local count = flags.count or 1

local store, err = cmpxchg.open(flags.store, { database = flags.database })
if not store then finish(3, err) end

local process = core.uuid()     -- draw ids: this process's id and a counter
local draws = 0

--- Draws the next number of sequence `key` at wall-clock time `now`. Returns the day
-- and the number, or nil, err, code.
local function draw(key, now)
    local today = os.date("!%Y-%m-%d", math.floor(now))
    draws = draws + 1
    local id = process .. "/" .. draws
    local tries = 0
    local value, index, code = store:update(key, function(current)
        tries = tries + 1
        if flags.think then core.sleep(flags.think) end
        -- ISO dates compare as strings; a day ahead of ours is the store's day now
        if type(current) == "table" and type(current.Day) == "string"
                and current.Day >= today then
            return { Day = current.Day, Last = current.Last + 1, Draw = id }
        end
        return { Day = today, Last = 1, Draw = id }
    end, { retries = 100 })     -- 8 processes drawing at once do lose races
    if value then return value.Day, value.Last, tries - 1 end
    if code == "timeout" or code == "connect" then
        -- the write may have been applied: is our id there?
        local now_value = store:get(key)
        if type(now_value) == "table" and now_value.Draw == id then
            return now_value.Day, now_value.Last, tries - 1
        end
        return nil, "outcome unknown (a number may be lost): " .. index, code
    end
    return nil, index, code
end

local key = "sequences/" .. name
if flags.go then
    print(("ready (pid %d)"):format(core.pid()))
    io.stdout:flush()
    require("examples.flags").wait_for_file(flags.go)
end
for _ = 1, count do
    local day, n, lost = draw(key, flags.now or os.time())
    if not day then
        store:close()
        finish(3, ("draw failed (%s): %s"):format(lost, n))
    end
    print(("drew %s %s #%d%s"):format(name, day, n,
        lost > 0 and (" (after %d lost %s)"):format(lost, lost == 1 and "race" or "races") or ""))
end
store:close()
os.exit(0)
