--- The sequential specification the linearizability checker holds each key
-- to: one versioned compare-and-set register with the README's semantics
-- ("Reference": store:get, store:put, store:delete).
--
--   get()          -> value, index of the current state (nil, 0 when absent)
--   put(v, 0)      creates only when absent; put(v, N), N > 0, replaces only
--                  when the current index is N (never creates). Success: a
--                  NEW index strictly greater than any the key had before;
--                  failure: the current index and value (0, nil when absent).
--   delete(N)      removes only when the current index is N: the index of
--                  the delete (greater than N) and the deleted value;
--                  otherwise, and always for N = 0, the current index, value.
--
-- A state is a small immutable table:
--   {k = "A", f = F}                absent; a new index must exceed F
--   {k = "P", v = V, i = I, f = I}  present: value V (canonical text), index I
--   {k = "P", v = V, f = F}         present, written by an operation whose
--                                   outcome was unknown: its index is not known,
--                                   only that it exceeds F; the first operation
--                                   that observes or compares the index pins it
--   {k = "U"}                       not known at all: the start of a window cut
--                                   out of a history (see checker.explain); the
--                                   first operation that observes it settles it
-- Every step that leaves a present state compares or reports its index, so an
-- unknown index is pinned before it can be replaced, and a strictly
-- increasing index can always be checked exactly.
--
-- Operations (built by checker.lua from the recorder's logs):
--   {kind = "get"|"put"|"delete", value = V (put), index = N (put, delete),
--    outcome = "ok"|"fail"|"unknown", r_index =, r_value =}
-- r_value is canonical text (model.canon) or nil; "unknown" operations have
-- no results: model.step gives the state if the operation took effect.
local model = {}

local ABSENT0 = { k = "A", f = 0 }
model.initial = ABSENT0
model.unknown = { k = "U" }

local json

--- The canonical text of a value, for comparisons: strings as themselves
-- (the clients write unique strings), anything else as JSON.
function model.canon(v)
    if v == nil then return nil end
    if type(v) == "string" then return "s" .. v end
    json = json or require "cmpxchg.json"
    return "j" .. tostring((json.encode(v)))
end

--- A state as text: equal texts are equal states (for memoization).
function model.key(s)
    if s.k == "P" then return ("P%s|%s|%s"):format(tostring(s.i or "?"), tostring(s.f), tostring(s.v)) end
    if s.k == "A" then return "A" .. s.f end
    return "U"
end

local function present(v, i) return { k = "P", v = v, i = i, f = i } end
local function absent(f) return { k = "A", f = f } end

--- The state `s` seen to hold index `n` (> 0) with value `v` (nil: any
-- value, unknown start only), or nil when it cannot.
local function holding(s, n, v)
    if s.k == "U" then return v and present(v, n) or { k = "P", i = n, f = n } end
    if s.k ~= "P" or (v and s.v and s.v ~= v) then return nil end
    if s.i then return s.i == n and s or nil end
    if n > s.f then return present(s.v, n) end      -- pins the unknown index
    return nil
end

model.holding = holding

--- The state `s` seen as (value `v`, index `n`), as get and failed writes
-- report it: absent is (nil, 0).
local function observe(s, v, n)
    if v == nil then
        if n ~= 0 then return nil end
        if s.k == "A" then return s end
        if s.k == "U" then return ABSENT0 end
        return nil
    end
    if type(n) ~= "number" or n <= 0 then return nil end
    return holding(s, n, v)
end
model.observe = observe

--- The state after `op` from `s`, or nil when `op` cannot take effect there
-- with the results it reported. For an unknown outcome: the state if it
-- took effect at this point (its new index unknown).
function model.step(s, op)
    local kind, out = op.kind, op.outcome
    if kind == "get" then
        return observe(s, op.r_value, op.r_index)
    end
    local n = op.index
    if out == "fail" then
        if kind == "put" and n == op.r_index then return nil end   -- it would have applied
        if kind == "delete" and n ~= 0 and n == op.r_index then return nil end
        return observe(s, op.r_value, op.r_index)
    end
    -- ok or unknown: the compare held at this point
    local before
    if n == 0 then
        if kind == "delete" then return nil end     -- delete(0) never succeeds
        if s.k == "P" then return nil end
        before = s.k == "A" and s.f or 0
    else
        local held = holding(s, n, kind == "delete" and out == "ok" and op.r_value or nil)
        if not held then return nil end
        if kind == "delete" and out == "ok" and op.r_value == nil then return nil end
        before = n
    end
    if out == "unknown" then
        if kind == "delete" then return absent(before + 1) end  -- its own index > n
        return { k = "P", v = op.value, f = before }
    end
    local new = op.r_index
    if type(new) ~= "number" or new <= before then return nil end
    if kind == "delete" then return absent(new) end
    return present(op.value, new)
end

--- Whether `op` (unknown outcome) can never take effect from `s` or any
-- state after it: a compare on index N once every index the key can still
-- have exceeds N (indexes only grow), and delete(0).
function model.spent(s, op)
    local n = op.index
    if op.kind == "get" then return false end
    if n == 0 then return op.kind == "delete" end       -- delete(0) never deletes
    if s.k == "A" then return n <= s.f end
    if s.k == "P" then
        if s.i then return n < s.i end
        return n <= s.f
    end
    return false
end

--- An operation in words: `put(k1, "c3-17", 0) -> true, 1234`.
function model.describe(op)
    local function val(c)
        if c == nil then return "nil" end
        if c:sub(1, 1) == "s" then return ("%q"):format(c:sub(2)) end
        return c:sub(2)
    end
    local call
    if op.kind == "get" then
        call = ("get(%s)"):format(op.key)
    elseif op.kind == "put" then
        call = ("put(%s, %s, %d)"):format(op.key, val(op.value), op.index)
    else
        call = ("delete(%s, %d)"):format(op.key, op.index)
    end
    local result
    if op.outcome == "unknown" then
        result = "unknown (" .. tostring(op.err or op.code) .. ")"
    elseif op.kind == "get" then
        result = ("%s, %s"):format(val(op.r_value), tostring(op.r_index))
    elseif op.kind == "put" and op.outcome == "ok" then
        result = ("true, %s"):format(tostring(op.r_index))
    else
        result = ("%s, %s, %s"):format(op.outcome == "ok" and "true" or "false",
            tostring(op.r_index), val(op.r_value))
    end
    return call .. " -> " .. result
end

return model
