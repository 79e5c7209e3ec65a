--- The history recorder: a client process logs the invocation and the
-- completion of each store operation to its own file, one JSON line per
-- event, flushed per event (one write(2), so a killed process leaves whole
-- lines, at most a partial last one), with times from the system-wide
-- monotonic clock (core.monotime, CLOCK_MONOTONIC), so that the files of
-- every process of the machine order on one time line.
--
--   local rec = recorder.open(path, "c3")
--   local n = rec:call(key, "put", value, index)     -- before the request
--   rec:done(n, "put", st:put(key, value, index))    -- after it, its results
--
-- Lines (checker.read_logs reads them back):
--   {"t":T,"p":P,"n":N,"e":"call","k":KEY,"f":"get"|"put"|"delete","v":V,"i":I}
--   {"t":T,"p":P,"n":N,"e":"ok","i":INDEX,"v":VALUE}     get; put (no v); delete
--   {"t":T,"p":P,"n":N,"e":"fail","i":CURRENT,"v":CURRENT_VALUE}  a failed compare
--   {"t":T,"p":P,"n":N,"e":"unknown","code":C,"err":E}  the write may have been applied
--   {"t":T,"p":P,"n":N,"e":"error","code":C,"err":E}    a definite failure: not applied
-- Which errors leave the outcome unknown is the README's word ("Errors",
-- store:update): timeout and connect.
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"

local recorder = {}
recorder.UNKNOWN = { timeout = true, connect = true }

local Rec = {}
Rec.__index = Rec

function recorder.open(path, proc)
    local f = assert(io.open(path, "a"))
    f:setvbuf("full")
    return setmetatable({ f = f, proc = proc, n = 0 }, Rec)
end

-- a value that JSON can carry: what the store returned, else its description
local function carry(v)
    if v == nil then return nil end
    if json.encode(v) then return v end
    return "unencodable " .. tostring(v)
end

function Rec:write(n, fields)
    fields.p, fields.n = self.proc, n
    local text = assert(json.encode(fields))
    -- the time with all its digits (cjson keeps 14 significant ones)
    self.f:write(('{"t":%.9f,%s\n'):format(core.monotime(), text:sub(2)))
    self.f:flush()
end

--- Logs the invocation of `kind` ("get", "put", "delete") on `key`; returns
-- the operation's number, for rec:done.
function Rec:call(key, kind, value, index)
    self.n = self.n + 1
    self:write(self.n, { e = "call", k = key, f = kind, v = value, i = index })
    return self.n
end

--- Logs the completion of operation `n` from the store call's results.
function Rec:done(n, kind, a, b, c)
    local e
    if kind == "get" then
        if a == nil and type(b) ~= "number" then
            e = { e = recorder.UNKNOWN[c] and "unknown" or "error", code = c, err = b }
        else
            e = { e = "ok", v = carry(a), i = b }
        end
    elseif a == nil then
        e = { e = recorder.UNKNOWN[c] and "unknown" or "error", code = c, err = b }
    elseif a == true then
        e = { e = "ok", i = b, v = kind == "delete" and carry(c) or nil }
    else
        e = { e = "fail", i = b, v = carry(c) }
    end
    self:write(n, e)
end

--[[ Multi-key operations (checker.lua reads them into multi.lua's model):
  {"e":"call","k":[KEYS],"f":"txn","o":[{"f":"put"|"delete","k":KEY,"v":V,"i":I}]}
  {"e":"ok","i":INDEX}                        the transaction's one index
  {"e":"fail","c":[{"k":KEY,"i":CURRENT,"v":VALUE}]}   its conflicts
  {"e":"call","k":[KEYS],"f":"read"}   then   {"e":"ok","c":[{"k","i","v"}]}
]]

--- Logs the invocation of store:transaction(ops) (items only).
function Rec:call_txn(ops)
    self.n = self.n + 1
    local keys, subs = {}, {}
    for i, op in ipairs(ops) do
        keys[i] = op.key
        subs[i] = { f = op.op, k = op.key, v = op.value, i = op.index }
    end
    self:write(self.n, { e = "call", k = keys, f = "txn", o = subs })
    return self.n
end

--- Logs the completion of transaction `n` from its results.
function Rec:done_txn(n, ok, a, b)
    local e
    if ok == nil then
        e = { e = recorder.UNKNOWN[b] and "unknown" or "error", code = b, err = a }
    elseif ok then
        e = { e = "ok", i = a }
    else
        local c = {}
        for i, conflict in ipairs(a) do
            c[i] = { k = conflict.key, i = conflict.index, v = carry(conflict.value) }
        end
        e = { e = "fail", c = c }
    end
    self:write(n, e)
end

--- Logs the invocation of store:get_many(keys).
function Rec:call_read(keys)
    self.n = self.n + 1
    self:write(self.n, { e = "call", k = keys, f = "read" })
    return self.n
end

--- Logs the completion of read `n` of `keys` from get_many's results.
function Rec:done_read(n, keys, map, err, code)
    if map == nil then
        self:write(n, { e = recorder.UNKNOWN[code] and "unknown" or "error", code = code, err = err })
        return
    end
    local c = {}
    for i, key in ipairs(keys) do
        local entry = map[key]
        c[i] = { k = key, i = entry and entry.index or 0, v = entry and carry(entry.value) or nil }
    end
    self:write(n, { e = "ok", c = c })
end

function Rec:close()
    self.f:close()
end

return recorder
