--- One client process of the per-operation benchmark, through the library:
-- the phases of bench/floor.c (put0, putcas, get, delete over N keys) on one
-- store, one line per phase: "phase NAME OPS WALL_S CPU_S FAILED", CPU being
-- user+sys of this process during the phase (os.clock: CLOCK_PROCESS_CPUTIME_ID).
--   lua5.4 bench/ops.lua [--bare] TARGET DATABASE PREFIX N [READY GO]
-- TARGET as for cmpxchg.open (a file path, http://..., etcd://...); DATABASE
-- may be "-" for none. --bare: the Lua floor (bench/bare.lua) instead of the
-- library, for the two server backends. With READY (ending in this process's number) and GO, and
-- $BENCH_PROCS processes: every phase starts when all processes are ready for it.
package.path = "./lua/?.lua;./lua/?/init.lua;./bench/?.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"

local bare = arg[1] == "--bare"
if bare then table.remove(arg, 1) end
local target, database, prefix, n, ready, go = arg[1], arg[2], arg[3], tonumber(arg[4]),
    arg[5], arg[6]
assert(target and prefix and n, "usage: ops.lua [--bare] TARGET DATABASE PREFIX N [READY GO]")
database = database ~= "-" and database or nil

local VALUE = { n = 42, s = "bench value", ok = true }

local st = not bare and assert(cmpxchg.open(target, { database = database }))

-- one function per phase, chosen before the timed loop (as floor.c's switch
-- costs next to nothing, the loop should measure the library, not dispatch)
local OPS = bare and require("bare").ops(target, database) or {
    put0 = function(key, indexes, i)
        local ok, idx = st:put(key, VALUE, 0)
        indexes[i] = idx
        return ok
    end,
    putcas = function(key, indexes, i)
        local ok, idx = st:put(key, VALUE, indexes[i])
        indexes[i] = idx
        return ok
    end,
    get = function(key, indexes, i)
        local _, idx = st:get(key)
        return idx == indexes[i]
    end,
    delete = function(key, indexes, i)
        return st:delete(key, indexes[i])
    end,
}

local PHASES = { "put0", "putcas", "get", "delete" }

-- warm-up: connection, caches, the JIT-less interpreter's own tables
local warm = {}
for i = 1, 20 do
    for _, phase in ipairs(PHASES) do OPS[phase](prefix .. "warm" .. i, warm, i) end
end

if ready then
    assert(io.open(ready, "w")):close()
    while not io.open(go, "r") do core.sleep(0.002) end
end

-- a barrier before each phase: GO.PHASE.I for each process I
local me, procs = ready and ready:match("(%d+)$"), tonumber(os.getenv("BENCH_PROCS") or "1")
local function barrier(phase)
    if not ready then return end
    assert(io.open(("%s.%s.%s"):format(go, phase, me), "w")):close()
    for i = 1, procs do
        while not io.open(("%s.%s.%d"):format(go, phase, i), "r") do core.sleep(0.001) end
    end
end

local keys, indexes = {}, {}
for i = 1, n do keys[i] = prefix .. i end
for _, phase in ipairs(PHASES) do
    barrier(phase)
    local op = OPS[phase]
    local t0, c0, failed = core.monotime(), os.clock(), 0
    for i = 1, n do
        local ok, err = op(keys[i], indexes, i)
        if not ok then
            failed = failed + 1
            if failed == 1 then         -- the first failure of a phase says why
                io.stderr:write(("%s %s failed: %s %s\n"):format(phase, keys[i], tostring(ok),
                    tostring(err)))
            end
        end
    end
    io.write(("phase %s %d %.6f %.6f %d\n"):format(phase, n, core.monotime() - t0,
        os.clock() - c0, failed))
end
if st then st:close() end
