--- One process of the transfer run (spec/integration/history_transactions_spec.lua):
-- a transferrer moves random amounts between two counters with
-- store:update_many, a reader checks every snapshot it reads with get_many.
--   lua transfer_worker.lua TARGET transfer|read SECONDS GO_FILE
-- TARGET: a store file, or "URL[,URL...]#database". It prints "ready (pid N)",
-- waits for GO_FILE, works SECONDS, then prints
--   transfer: "moved TOTAL in N transfers" and "unknown AMOUNT CODE" per
--             transfer whose outcome is unknown
--   read:     "read N snapshots" and "torn A@I B@J" per snapshot whose sum is
--             not 1000 or whose two indexes differ (both keys are always
--             written by one transaction, so they always share its index)
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"

local target, mode, seconds, go = arg[1], arg[2], tonumber(arg[3]), arg[4]
local KEYS = { "acct/a", "acct/b" }
local SUM = 1000

local function open()
    local urls, database = target:match("^(%a+://.-)#(.+)$")
    if not urls then return cmpxchg.open(target, { timeout = 5 }) end
    local list = {}
    for url in urls:gmatch("[^,]+") do list[#list + 1] = url end
    return cmpxchg.open(list, { database = database })
end

local st = assert(open())
io.stdout:write(("ready (pid %d)\n"):format(core.pid()))
io.stdout:flush()
assert(require("examples.flags").wait_for_file(go, 120), "no go")
math.randomseed(core.pid() * 31 + math.floor(core.monotime() * 1000) % 100000)

local deadline = core.monotime() + seconds
if mode == "transfer" then
    local moved, n = 0, 0
    while core.monotime() < deadline do
        local amount = math.random(-10, 10)
        if amount == 0 then amount = 1 end
        local values, err, code = st:update_many(KEYS, function(v)
            return { ["acct/a"] = v["acct/a"] - amount, ["acct/b"] = v["acct/b"] + amount }
        end, { retries = math.huge })
        if values then
            moved, n = moved + amount, n + 1
        else
            io.stdout:write(("unknown %d %s %s\n"):format(amount, tostring(code), tostring(err)))
        end
    end
    io.stdout:write(("moved %d in %d transfers\n"):format(moved, n))
else
    local n = 0
    while core.monotime() < deadline do
        local map, err, code = st:get_many(KEYS)
        if map then
            n = n + 1
            local a, b = map["acct/a"], map["acct/b"]
            if not (a and b) or a.value + b.value ~= SUM or a.index ~= b.index then
                io.stdout:write(("torn %s@%s %s@%s\n"):format(a and a.value, a and a.index,
                    b and b.value, b and b.index))
            end
        else
            io.stdout:write(("read failed %s %s\n"):format(tostring(code), tostring(err)))
        end
    end
    io.stdout:write(("read %d snapshots\n"):format(n))
end
st:close()
