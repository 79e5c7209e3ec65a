-- The blog's RavenDbProcessMonitor, in Lua: press ENTER to take the lock on a key,
-- ENTER again to give it back. Start it in two terminals on one store and watch them
-- take turns; the index each one prints is the fencing token, and it only goes up.
--
--   lua5.4 examples/monitor.lua [--store PATH] [--key K]
--   lua5.4 examples/monitor.lua --unattended N [--hold SECONDS]   (no stdin: N rounds)

-- run from the checkout without installing: prefer the in-tree build
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

local cmpxchg = require "cmpxchg"

local function fail(message)
    io.stderr:write("monitor: ", message, "\n")
    os.exit(1)
end

local flags, bad = require("examples.flags").parse(arg, { store = "string", key = "string",
    unattended = "number", hold = "number" })
if not flags then fail(bad) end
local key = flags.key or "processes/monitor-demo"
local hold = flags.hold or 0.05

-- no --store: $CMPXCHG_URL, else the default file, so several copies meet on one store
local store, err = cmpxchg.open(flags.store)
if not store then fail(err) end

-- enter() waits as long as it takes (a 5-minute lease by default), like the C# Enter
local monitor = cmpxchg.monitor(store)

-- cmpxchg has no public sleep; the shell's takes fractions on GNU, BSD and busybox
local function sleep(seconds)
    os.execute(("sleep %.3f"):format(seconds))
end

-- One round the way the C# sample does it: enter returns the index, exit needs it
-- back, so a process can only delete the lease it holds, never a newer holder's.
local function round(n, pause)
    local index, why = monitor:enter(key)
    if not index then fail(why) end
    if pause then
        pause(index)
    else
        sleep(hold)
    end
    local ok, lost = monitor:exit(key, index)
    if not ok then fail(("round %d: release failed: %s"):format(n, tostring(lost))) end
    print(("round %d: acquired index %d, released"):format(n, index))
end

-- The same with a lock object: `<close>` releases it when the scope ends, the Lua
-- form of C#'s `using (monitor.Lock(key)) { ... }`.
local function scoped_round(pause)
    local held
    do
        local lock <close>, why = monitor:lock(key)
        if not lock then fail(why) end
        held = lock
        if pause then pause(lock:token()) else sleep(hold) end
    end
    -- release is idempotent: asking again reports how the <close> release went
    local ok, lost = held:release()
    if not ok then fail("scoped release failed: " .. tostring(lost)) end
    print(("scoped: acquired index %d, released by <close> (%s)")
        :format(held:token(), cmpxchg.type(held)))
end

if flags.unattended then
    for n = 1, flags.unattended do
        round(n)
        -- rest before the next round: waiters poll (with backoff), so a process that
        -- re-enters at once would usually win again and the others would starve
        sleep(hold)
    end
    scoped_round()
else
    local function wait_for_enter(index)
        io.write(("holding %s with index %d; press ENTER to release "):format(key, index))
        io.stdout:flush()
        io.read("*l")
    end
    local n = 0
    while true do
        io.write(("ENTER: acquire %s, l: acquire as a <close> lock, q: quit > "):format(key))
        io.stdout:flush()
        local line = io.read("*l")
        if line == nil or line:lower() == "q" then break end
        if line:lower() == "l" then
            scoped_round(wait_for_enter)
        else
            n = n + 1
            round(n, wait_for_enter)
        end
    end
end

store:close()
