--- One client process of the transaction benchmark: ROUNDS times, N writes
-- as one store:transaction, and N writes as N sequential puts, on fresh keys;
-- one line per phase: "phase NAME WRITES WALL_S CPU_S FAILED" (as ops.lua),
-- NAME "txn" or "puts".
--   lua5.4 bench/txn.lua TARGET DATABASE PREFIX N ROUNDS
-- TARGET as for cmpxchg.open (a file path, http://..., etcd://...); DATABASE
-- may be "-" for none.
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"

local target, database, prefix, n, rounds = arg[1], arg[2], arg[3], tonumber(arg[4]),
    tonumber(arg[5])
assert(target and prefix and n and rounds, "usage: txn.lua TARGET DATABASE PREFIX N ROUNDS")
database = database ~= "-" and database or nil

local VALUE = { n = 42, s = "bench value", ok = true }
local st = assert(cmpxchg.open(target, { database = database }))

local function txn(round)
    local ops = {}
    for i = 1, n do
        ops[i] = { op = "put", key = ("%st%d/%d"):format(prefix, round, i), value = VALUE,
                   index = 0 }
    end
    local ok, err = st:transaction(ops)
    return ok and n or 0, err
end

local function puts(round)
    local done, err = 0, nil
    for i = 1, n do
        local ok, e = st:put(("%sp%d/%d"):format(prefix, round, i), VALUE, 0)
        if ok then done = done + 1 else err = err or e end
    end
    return done, err
end

-- warm-up: connection, caches
txn(0)
puts(0)

for _, phase in ipairs({ { "txn", txn }, { "puts", puts } }) do
    local name, fn = phase[1], phase[2]
    local t0, c0, failed = core.monotime(), os.clock(), 0
    for round = 1, rounds do
        local done, err = fn(round)
        if done ~= n then
            failed = failed + (n - done)
            if failed == n - done then
                io.stderr:write(("%s round %d failed: %s\n"):format(name, round, tostring(err)))
            end
        end
    end
    io.write(("phase %s %d %.6f %.6f %d\n"):format(name, n * rounds, core.monotime() - t0,
        os.clock() - c0, failed))
end
st:close()
