-- The docs' SharedResource: reserve the first-floor printer, print, release. The
-- reservation is a compare-exchange value {ReservedUntil = <UTC date>}; whoever finds
-- it past that date may take it over, so a holder that vanished blocks the printer
-- only until its reservation runs out, never for good.
--
--   lua5.4 examples/shared_resource.lua [--store PATH] [--key K] [--ttl SECONDS]
--                                       [--wait SECONDS] [--work SECONDS] [--vanish]
-- --vanish: reserve, then exit without releasing (a holder that crashed).
-- Exit: 0 printed (or vanished), 1 printer busy for all of --wait, 2 the reservation
--       expired while printing and someone took it over, 3 the store failed.

-- run from the checkout without installing: prefer the in-tree build
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

local cmpxchg = require "cmpxchg"

local finish = require("examples.flags").finish

local flags, bad = require("examples.flags").parse(arg, { store = "string", key = "string",
    ttl = "number", wait = "number", work = "number", vanish = "switch" })
if not flags then finish(3, bad) end
local key = flags.key or "printers/first-floor"
local ttl, wait, work = flags.ttl or 20, flags.wait or 5, flags.work or 0.1

local store, err = cmpxchg.open(flags.store)
if not store then finish(3, err) end

-- Look first, only to say what we find: the lock below decides, atomically.
-- ReservedUntil is ISO 8601 UTC, so its first 19 characters compare as text
-- with the current UTC time written the same way.
local before = store:get(key)
local until_before = type(before) == "table" and before.ReservedUntil
if type(until_before) == "string" then
    if until_before:sub(1, 19) < os.date("!%Y-%m-%dT%H:%M:%S") then
        print("previous holder's reservation expired at " .. until_before)
    else
        print(("reserved by someone else until %s; waiting up to %g s")
            :format(until_before, wait))
    end
end

-- Reserve: create with index 0; if taken, wait (up to --wait) until the holder
-- releases, or until its ReservedUntil has passed and take it over by its index.
-- `<close>` is the docs' try/finally: the reservation is released however we leave.
local reservation <close>, why, code = store:lock(key,
    { expires_field = "ReservedUntil", ttl = ttl, timeout = wait })
if not reservation then finish(code == "timeout" and 1 or 3, "printer busy: " .. why) end
if reservation.takeovers > 0 then
    print(("took over: the previous holder's reservation expired at %s (%d attempts, %.2f s)")
        :format(until_before or "?", reservation.attempts, reservation.waited))
end

-- The token (the index) fences the work: a printer that remembers the highest token
-- it has seen can refuse a late job from a holder whose reservation ran out.
local value = store:get(key)
print(("reserved %s: token %d, ReservedUntil %s")
    :format(key, reservation:token(), value and value.ReservedUntil or "?"))

if flags.vanish then
    -- os.exit without `close` ends the process on the spot: no <close> handler and
    -- no __gc runs, so the reservation stays, as if the machine had died. (With
    -- os.exit(0, true) Lua 5.4 closes the state and <close> WOULD release it.)
    finish(0, "vanishing without releasing")
end

print(("printing for %g s"):format(work))
os.execute(("sleep %.3f"):format(work))     -- cmpxchg has no public sleep

local released, lost = reservation:release()
store:close()
if released == nil then finish(3, "release failed: " .. lost) end
if not released then
    finish(2, "lost: the reservation expired while printing and was taken over")
end
finish(0, "released " .. key)
