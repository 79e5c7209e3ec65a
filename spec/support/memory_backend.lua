--- A scripted in-memory backend with RavenDB's compare-exchange semantics, for
-- exact unit tests of the layers above the backend interface. It records
-- every call and can be told to fail the next ones.
local json = require "cmpxchg.json"

local Memory = {}
Memory.__index = Memory

--- opts.write_ids: put and delete deduplicate by their write id, as RavenDB
-- does by raft-request-id: a write sent again with its id is not applied
-- again, and answered as the first time.
function Memory.new(opts)
    local self = setmetatable({ items = {}, last_index = 0, calls = {}, faults = {},
                                history = {} }, Memory)
    self.write_ids = opts and opts.write_ids or nil
    return self
end

--- The next call of `method` returns nil, err, code instead of running.
function Memory:fail_next(method, err, code)
    self.faults[method] = { err, code }
end

--- The next call of `method` is applied, then answers nil, err, code: a
-- reply lost after the write happened.
function Memory:fail_after_apply(method, err, code)
    self.faults[method] = { err, code, after = true }
end

function Memory:record(method, ...)
    self.calls[#self.calls + 1] = { method = method, n = select("#", ...), ... }
    local fault = self.faults[method]
    if fault and not fault.after then
        self.faults[method] = nil
        return fault
    end
end


function Memory:count(method)
    local n = 0
    for _, c in ipairs(self.calls) do
        if method == nil or c.method == method then n = n + 1 end
    end
    return n
end

function Memory.describe() return "memory" end

function Memory:put(key, text, index, expires, write_id)
    local fault = self:record("put", key, text, index, expires, write_id)
    if fault then return nil, fault[1], fault[2] end
    local k, cur = key:lower(), self.items[key:lower()]
    if (index == 0 and cur) or (index ~= 0 and (not cur or cur.index ~= index)) then
        return false, cur and cur.index or 0, cur and json.decode(cur.text)
    end
    self.last_index = self.last_index + 1
    self.items[k] = { key = key, text = text, index = self.last_index, expires = expires }
    return true, self.last_index
end

function Memory:delete(key, index, write_id)
    local fault = self:record("delete", key, index, write_id)
    if fault then return nil, fault[1], fault[2] end
    local k, cur = key:lower(), self.items[key:lower()]
    if not cur or cur.index ~= index then
        return false, cur and cur.index or 0, cur and json.decode(cur.text)
    end
    self.last_index = self.last_index + 1
    self.items[k] = nil
    return true, self.last_index, json.decode(cur.text)
end

--- Wraps put/delete so that a fail_after_apply fault answers after applying,
-- and, with write ids, a write whose id was seen answers as it did then.
for _, method in ipairs({ "put", "delete" }) do
    local apply = Memory[method]
    local id_at = method == "put" and 5 or 3
    Memory[method] = function(self, ...)
        local id = self.write_ids and select(id_at, ...)
        local seen = id and self.history[id]
        if seen then
            self:record(method, ...)
            return seen[1], seen[2], seen[3]
        end
        local fault = self.faults[method]
        local a, b, c = apply(self, ...)
        if id and a ~= nil then self.history[id] = { a, b, c } end
        if fault and fault.after then
            self.faults[method] = nil
            return nil, fault[1], fault[2]
        end
        return a, b, c
    end
end

function Memory:get(key)
    local fault = self:record("get", key)
    if fault then return nil, fault[1], fault[2] end
    local cur = self.items[key:lower()]
    if not cur then return 0, nil end
    return cur.index, json.decode(cur.text)
end

function Memory:get_many(keys)
    local fault = self:record("get_many", keys)
    if fault then return nil, fault[1], fault[2] end
    local out = {}
    for i, key in ipairs(keys) do
        local cur = self.items[key:lower()]
        out[i] = { index = cur and cur.index or 0, value = cur and json.decode(cur.text) }
    end
    return out
end

function Memory:list(prefix, start, page_size)
    local fault = self:record("list", prefix, start, page_size)
    if fault then return nil, fault[1], fault[2] end
    local keys = {}
    for k in pairs(self.items) do
        if k:sub(1, #prefix) == prefix:lower() then keys[#keys + 1] = k end
    end
    table.sort(keys)
    local out = {}
    for i = start + 1, math.min(#keys, start + (page_size or #keys)) do
        local cur = self.items[keys[i]]
        out[#out + 1] = { key = cur.key, index = cur.index, value = json.decode(cur.text) }
    end
    return out
end

function Memory:close()
    self:record("close")
    return true
end

--- The stored item of `key` (decoded value and @expires), for assertions.
function Memory:item(key)
    local cur = self.items[key:lower()]
    if cur then return json.decode(cur.text), cur.index, cur.expires end
end

return Memory
