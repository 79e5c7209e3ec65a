--- Child process of the RavenDB chaos spec (spec/integration/ravendb_chaos_spec.lua):
-- until SECONDS have passed, takes locks (a fenced write in every critical
-- section) and makes compare-and-set operations on a few keys, against every node
-- of an emulated cluster that is being disturbed meanwhile.
--   lua ravendb_chaos_worker.lua URLS DATABASE ID LOGDIR SECONDS
-- URLS: the nodes, comma-separated. Two files in LOGDIR:
--   history-ID.log  the compare-and-set operations, one JSON line per invocation
--                   and per completion, in the format of issue 14's history
--                   recorder (spec/support/history/recorder.lua), which its
--                   linearizability checker reads; written by that recorder
--                   when it is in the tree, else by the same lines here
--   events-ID.log   one JSON line per call (its kind, start, duration and
--                   outcome), per critical section, per fenced write, per lost
--                   lock; all times on the system-wide monotonic clock
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"
local fenced = require "spec.support.fenced_writer"
local json = require "cmpxchg.json"

local urls_arg, database, id, logdir, seconds = arg[1], arg[2], arg[3], arg[4], tonumber(arg[5])

local STORE_TIMEOUT = 3         -- seconds a store call may take, every node included
local LOCK = { ttl = 2, timeout = 4 }
local LOCK_KEYS = { "chaos/lock/a", "chaos/lock/b" }
local CAS_KEYS = { "chaos/cas/1", "chaos/cas/2", "chaos/cas/3", "chaos/cas/4" }

local urls = {}
for url in urls_arg:gmatch("[^,]+") do urls[#urls + 1] = url end

local function open_log(name)
    local f = assert(io.open(("%s/%s-%s.log"):format(logdir, name, id), "a"))
    f:setvbuf("full")
    return f
end

local events = open_log("events")
local function event(fields)
    events:write(assert(json.encode(fields)), "\n")
    events:flush()
end

--[[ The history, as issue 14's recorder writes it (one line per event,
flushed per event, times from core.monotime):
  {"t":T,"p":P,"n":N,"e":"call","k":KEY,"f":"get"|"put"|"delete","v":V,"i":I}
  {"t":T,"p":P,"n":N,"e":"ok"|"fail"|"unknown"|"error",...}
Until spec/support/history/recorder.lua is in the tree, the same lines come
from this copy of its rules. ]]
local recorder
do
    local ok, module = pcall(require, "spec.support.history.recorder")
    if ok then
        recorder = module.open(("%s/history-%s.log"):format(logdir, id), id)
    else
        local f, n = open_log("history"), 0
        local UNKNOWN = { timeout = true, connect = true }
        local function write(k, fields)
            fields.p, fields.n = id, k
            f:write(('{"t":%.9f,%s\n'):format(core.monotime(), assert(json.encode(fields)):sub(2)))
            f:flush()
        end
        recorder = {
            call = function(_, key, kind, value, index)
                n = n + 1
                write(n, { e = "call", k = key, f = kind, v = value, i = index })
                return n
            end,
            done = function(_, k, kind, a, b, c)
                local e
                if (kind == "get" and a == nil and type(b) ~= "number") or (kind ~= "get" and a == nil) then
                    e = { e = UNKNOWN[c] and "unknown" or "error", code = c, err = b }
                elseif kind == "get" then
                    e = { e = "ok", v = a, i = b }
                elseif a == true then
                    e = { e = "ok", i = b, v = kind == "delete" and c or nil }
                else
                    e = { e = "fail", i = b, v = c }
                end
                write(k, e)
            end,
        }
    end
end

--- Runs `fn(...)` and logs the call: kind, start, duration, outcome.
local function timed(kind, fn, ...)
    local t0 = core.monotime()
    local a, b, c, d = fn(...)
    local outcome = a == nil and "error" or (a == false and "false" or "ok")
    if kind == "get" and a == nil and type(b) == "number" then outcome = "ok" end
    event({ e = "call", kind = kind, t = t0, d = core.monotime() - t0, outcome = outcome,
            code = outcome == "error" and (type(c) == "string" and c or tostring(c)) or nil })
    return a, b, c, d
end

local store, err
for _ = 1, 100 do
    store, err = cmpxchg.open(urls, { database = database, timeout = STORE_TIMEOUT })
    if store then break end
    core.sleep(0.1)
end
if not store then error("cannot open the store: " .. tostring(err)) end

local known = {}            -- CAS key -> the index last seen
local written = 0

local function cas_op()
    local key = CAS_KEYS[math.random(#CAS_KEYS)]
    local r = math.random()
    if r < 0.4 then
        local n = recorder:call(key, "get")
        local value, index, code = timed("get", store.get, store, key)
        recorder:done(n, "get", value, index, code)
        if value ~= nil or index == 0 then known[key] = index end
    elseif r < 0.85 then
        written = written + 1
        local value = ("w%s-%d"):format(id, written)
        local index = r < 0.7 and (known[key] or 0) or 0
        local n = recorder:call(key, "put", value, index)
        local ok, idx, cur = timed("put", store.put, store, key, value, index)
        recorder:done(n, "put", ok, idx, cur)
        if ok ~= nil then known[key] = idx end
    else
        local index = known[key] or 0
        local n = recorder:call(key, "delete", nil, index)
        local ok, idx, cur = timed("delete", store.delete, store, key, index)
        recorder:done(n, "delete", ok, idx, cur)
        if ok == true then known[key] = 0 elseif ok == false then known[key] = idx end
    end
end

local sections = 0
local function lock_section()
    local key = LOCK_KEYS[math.random(#LOCK_KEYS)]
    local resource = key:gsub("/lock/", "/resource/")
    local auto_renew = tonumber(id) % 2 == 1
    local l = timed("lock", store.lock, store, key, { ttl = LOCK.ttl, timeout = LOCK.timeout,
        auto_renew = auto_renew,
        on_lost = function(_, why) event({ e = "lost", key = key, why = why, t = core.monotime() }) end })
    if not l then return end
    sections = sections + 1
    local acquisition = ("%s/%d"):format(id, sections)
    local t_enter = core.monotime()
    local held_enter = l:is_held()
    local token = l:token()
    core.sleep(0.02 + 0.05 * math.random())         -- work before the write
    local ok, x, code = timed("fenced", fenced.write, store, resource, token,
        acquisition, 6)
    event({ e = "fenced", key = resource, token = token, acquisition = acquisition,
            r = ok and "accepted" or (ok == false and "refused" or "failed"),
            index = ok and x or nil, recorded = ok == false and x or nil,
            code = ok == nil and code or nil })
    core.sleep(0.01 * math.random())                 -- work after it
    local t_check = core.monotime()                  -- taken before is_held: held then
    local held_check = l:is_held()
    event({ e = "section", key = key, acquisition = acquisition, token = token,
            t0 = t_enter, t1 = t_check, held = held_enter and held_check,
            auto_renew = auto_renew })
    timed("release", l.release, l)
end

math.randomseed(core.pid() + math.floor(core.monotime() * 1000))
event({ e = "start", t = core.monotime(), pid = core.pid() })
local stop_at = core.monotime() + seconds
local ok, crash = xpcall(function()
    while core.monotime() < stop_at do
        if math.random() < 0.35 then lock_section() else cas_op() end
        core.sleep(0.005 + 0.02 * math.random())
    end
end, debug.traceback)
if not ok then
    event({ e = "crash", why = tostring(crash) })
    os.exit(1)
end
event({ e = "done", t = core.monotime() })
store:close()
