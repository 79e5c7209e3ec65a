--- A client process of the multi-key history runs: random transactions over
-- two or three of the keys (creates, compare-and-sets, deletes and checks of
-- absence, at the indexes last seen or stale ones), snapshot reads of every
-- key (get_many), and single puts and deletes, each logged with the recorder,
-- until STOPFILE exists (or SECONDS pass). Arguments as client.lua's:
--   lua txn_client.lua TARGET LOGFILE PROC STOPFILE SECONDS THINK_MS KEY[,KEY...]
-- Values are unique: "PROC-N-I". It prints "pid PID", then "opened".
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"
local recorder = require "spec.support.history.recorder"

local target, logfile, proc, stopfile, seconds, think, keylist =
    arg[1], arg[2], arg[3], arg[4], tonumber(arg[5]), tonumber(arg[6]), arg[7]

io.stdout:write(("pid %d\n"):format(core.pid()))
io.stdout:flush()

local keys = {}
for k in keylist:gmatch("[^,]+") do keys[#keys + 1] = k end

local function open()
    local urls, database = target:match("^(%a+://.-)#(.+)$")
    if not urls then return cmpxchg.open(target, { timeout = 1 }) end
    local list = {}
    for url in urls:gmatch("[^,]+") do list[#list + 1] = url end
    return cmpxchg.open(list, { database = database, timeout = 2 })
end

local deadline = core.monotime() + seconds
local st, err
local open_by = core.monotime() + 30
repeat
    st, err = open()
    if not st then core.sleep(0.05) end
until st or core.monotime() > open_by
assert(st, err)
io.stdout:write("opened\n")
io.stdout:flush()

local rec = recorder.open(logfile, proc)
local known = {}                        -- by key: the index last seen (0: absent)

local function stopped()
    local f = io.open(stopfile, "r")
    if f then f:close() end
    return f ~= nil
end

--- Two or three distinct keys, in a random order.
local function some_keys()
    local pool = {}
    for i, k in ipairs(keys) do pool[i] = k end
    local out = {}
    for _ = 1, math.random(2, math.min(3, #pool)) do
        out[#out + 1] = table.remove(pool, math.random(#pool))
    end
    return out
end

math.randomseed(core.pid() * 7919 + math.floor(core.monotime() * 1000) % 100000)
while not stopped() and core.monotime() < deadline do
    local r = math.random()
    local n = rec.n + 1
    if r < 0.25 then
        local id = rec:call_read(keys)
        local map, rerr, code = st:get_many(keys)
        rec:done_read(id, keys, map, rerr, code)
        if map then
            for _, k in ipairs(keys) do known[k] = map[k] and map[k].index or 0 end
        end
    elseif r < 0.85 then
        local ops = {}
        for i, key in ipairs(some_keys()) do
            local index = known[key] or 0
            if math.random() < 0.1 then index = math.random(1, 50) end     -- a stale index
            if math.random() < 0.25 then
                ops[i] = { op = "delete", key = key, index = index }
            else
                ops[i] = { op = "put", key = key, value = ("%s-%d-%d"):format(proc, n, i),
                           index = index }
            end
        end
        local id = rec:call_txn(ops)
        local ok, a, b = st:transaction(ops)
        rec:done_txn(id, ok, a, b)
        if ok then
            for _, op in ipairs(ops) do
                if op.op == "put" then known[op.key] = a
                elseif op.index > 0 then known[op.key] = 0 end
            end
        elseif ok == false then
            for _, c in ipairs(a) do known[c.key] = c.index end
        end
    else
        local key = keys[math.random(#keys)]
        local index = known[key] or 0
        if math.random() < 0.5 then
            local value = ("%s-%d-0"):format(proc, n)
            local id = rec:call(key, "put", value, index)
            local ok, idx, cur = st:put(key, value, index)
            rec:done(id, "put", ok, idx, cur)
            if ok ~= nil then known[key] = idx end
        else
            local id = rec:call(key, "delete", nil, index)
            local ok, idx, cur = st:delete(key, index)
            rec:done(id, "delete", ok, idx, cur)
            if ok == true then known[key] = 0 elseif ok == false then known[key] = idx end
        end
    end
    if think > 0 then core.sleep(math.random() * think / 1000) end
end
rec:close()
st:close()
io.stdout:write("done\n")
