--- A client process of the history runs (spec/support/history/run.lua):
-- random get, create, compare-and-set, stale put and delete on a few keys,
-- each logged with the recorder, until STOPFILE exists (or SECONDS pass).
--   lua client.lua TARGET LOGFILE PROC STOPFILE SECONDS THINK_MS KEY[,KEY...]
-- TARGET: a store file, or "URL#database" where URL may list several
-- endpoints separated by commas. Values are unique: "PROC-N".
-- It prints "pid PID" first, then "opened" once its store is open.
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
repeat                                  -- a fault may be going on right now
    st, err = open()
    if not st then core.sleep(0.05) end
until st or core.monotime() > open_by
assert(st, err)
io.stdout:write("opened\n")
io.stdout:flush()

local rec = recorder.open(logfile, proc)
local known, older = {}, {}             -- by key: the index last seen, one seen before

local function saw(key, index)
    if type(index) ~= "number" then return end
    if known[key] and known[key] ~= index then older[key] = known[key] end
    known[key] = index
end

local function stopped()
    local f = io.open(stopfile, "r")
    if f then f:close() end
    return f ~= nil
end

math.randomseed(core.pid() * 7919 + math.floor(core.monotime() * 1000) % 100000)
while not stopped() and core.monotime() < deadline do
    local key = keys[math.random(#keys)]
    local r = math.random()
    local value = ("%s-%d"):format(proc, rec.n + 1)
    if r < 0.25 then
        local n = rec:call(key, "get")
        local v, index, code = st:get(key)
        rec:done(n, "get", v, index, code)
        if v ~= nil or index == 0 then saw(key, index) end
    elseif r < 0.80 then
        local index
        if r < 0.40 then
            index = 0                                   -- create
        elseif r < 0.70 then
            index = known[key] or 0                     -- compare-and-set
        else
            index = older[key] or math.random(1, 50)    -- a stale index
        end
        local n = rec:call(key, "put", value, index)
        local ok, idx, cur = st:put(key, value, index)
        rec:done(n, "put", ok, idx, cur)
        if ok ~= nil then saw(key, idx) end
    else
        local index = r < 0.97 and (known[key] or 0) or (older[key] or 0)
        local n = rec:call(key, "delete", nil, index)
        local ok, idx, cur = st:delete(key, index)
        rec:done(n, "delete", ok, idx, cur)
        if ok == true then saw(key, 0) elseif ok == false then saw(key, idx) end
    end
    if think > 0 then core.sleep(math.random() * think / 1000) end
end
rec:close()
st:close()
io.stdout:write("done\n")
