--- The sequential specification of several keys at once, for histories with
-- multi-key operations: each key the versioned register of model.lua, and two
-- operations that span keys (README "store:transaction", "store:get_many"):
--
--   txn(ops)       every compare holds (put/delete at N: the key's index is N;
--                  at 0: the key is absent), then every write takes one NEW
--                  index, greater than any index each of its keys had; a delete
--                  at 0 writes nothing. When a compare fails nothing is written,
--                  and the keys whose compare fails are reported with their
--                  current index and value (0 when absent; a value may be
--                  missing: RavenDB reads it after the refusal, and leaves it out
--                  when that read lagged), and only those.
--   read(keys)     the index and value of every key, from one state.
--
-- Linearizability is local per object (Herlihy & Wing), and an operation that
-- spans keys makes them one object: checker.lua checks each group of keys
-- that multi-key operations join as one composite register, with this model;
-- a key no such operation touches keeps model.lua alone.
--
-- A composite state maps each key of the group to its model.lua state, and
-- is immutable like them. Operations (checker.read_logs): single-key ones as
-- in model.lua, plus
--   {kind = "txn", ops = {{kind = "put"|"delete", key =, value =, index =}},
--    outcome = "ok"|"fail"|"unknown", r_index = (ok), r_conflicts = (fail)
--    {[key] = {index =, value =}}}
--   {kind = "read", keys =, outcome = "ok", r_values = {[key] = {index =, value =}}}
-- A transaction of unknown outcome that took effect gives each key it wrote
-- an index known only to exceed the key's previous one: the indexes of its
-- keys are pinned one by one (weaker than "one index for all", never stricter).
local model = require "spec.support.history.model"

local multi = {}

local ABSENT0 = model.initial

--- The model over the keys `keys` (a sorted array): {initial, unknown, step,
-- spent, key, describe}, as checker.search takes it.
function multi.new(keys)
    local m = {}
    local initial, unknown = {}, {}
    for _, k in ipairs(keys) do
        initial[k], unknown[k] = ABSENT0, model.unknown
    end
    m.initial, m.unknown = initial, unknown

    local function with(s, changes)
        local out = {}
        for k, v in pairs(s) do out[k] = changes[k] or v end
        return out
    end

    function m.key(s)
        local parts = {}
        for i, k in ipairs(keys) do parts[i] = model.key(s[k]) end
        return table.concat(parts, "\0")
    end

    --- The state of one key after a transaction's sub-operation whose
    -- compare holds, or nil when it does not hold; with `index` (the
    -- transaction's, nil: unknown outcome) for what it writes.
    local function apply(ks, sub, index)
        local before
        if sub.index == 0 then
            if ks.k == "P" then return nil end
            if sub.kind == "delete" then
                return ks.k == "U" and ABSENT0 or ks, nil      -- a check of absence
            end
            before = ks.k == "A" and ks.f or 0
        else
            if ks.k == "A" or not model.holding(ks, sub.index) then return nil end
            before = sub.index
        end
        if index == nil then
            if sub.kind == "delete" then return { k = "A", f = before + 1 } end
            return { k = "P", v = sub.value, f = before }
        end
        if index <= before then return nil end
        if sub.kind == "delete" then return { k = "A", f = index } end
        return { k = "P", v = sub.value, i = index, f = index }
    end

    --- Whether the compare of `sub` holds on `ks` (pinning it), as apply.
    local function holds(ks, sub)
        if sub.index == 0 then
            if ks.k == "P" then return nil end
            return ks.k == "U" and ABSENT0 or ks
        end
        if ks.k == "A" then return nil end
        return model.holding(ks, sub.index)
    end

    local function observe(ks, entry)
        if entry.index > 0 and entry.value == nil then
            return ks.k ~= "A" and model.holding(ks, entry.index) or nil    -- value not known
        end
        return model.observe(ks, entry.value, entry.index)
    end

    function m.step(s, op)
        local kind = op.kind
        if kind == "read" then
            local changes = {}
            for _, k in ipairs(op.keys) do
                local e = op.r_values[k] or { index = 0 }
                local ks = observe(s[k], e)
                if not ks then return nil end
                changes[k] = ks
            end
            return with(s, changes)
        elseif kind ~= "txn" then
            local ks = model.step(s[op.key], op)
            if not ks then return nil end
            return with(s, { [op.key] = ks })
        end
        local changes = {}
        if op.outcome == "fail" then
            local failed = false
            for _, sub in ipairs(op.ops) do
                local e = op.r_conflicts[sub.key]
                local ks
                if e then
                    -- reported: its compare must fail there, with what it reports
                    if e.index == sub.index then return nil end
                    ks = observe(s[sub.key], e)
                    failed = true
                else
                    ks = holds(s[sub.key], sub)
                end
                if not ks then return nil end
                changes[sub.key] = ks
            end
            if not failed then return nil end
            return with(s, changes)
        end
        local index = op.outcome == "ok" and op.r_index or nil
        if op.outcome == "ok" and type(index) ~= "number" then return nil end
        for _, sub in ipairs(op.ops) do
            local ks = apply(s[sub.key], sub, index)
            if not ks then return nil end
            changes[sub.key] = ks
        end
        return with(s, changes)
    end

    --- A transaction of unknown outcome can never take effect once one of
    -- its compares can never hold again (indexes only grow).
    function m.spent(s, op)
        if op.kind == "txn" then
            for _, sub in ipairs(op.ops) do
                if sub.index > 0 and model.spent(s[sub.key], { kind = "put", index = sub.index }) then
                    return true
                end
            end
            return false
        elseif op.kind == "read" then
            return false
        end
        return model.spent(s[op.key], op)
    end

    m.describe = multi.describe
    return m
end

local function val(c)
    if c == nil then return "nil" end
    if c:sub(1, 1) == "s" then return ("%q"):format(c:sub(2)) end
    return c:sub(2)
end

--- An operation in words.
function multi.describe(op)
    if op.kind ~= "txn" and op.kind ~= "read" then return model.describe(op) end
    if op.kind == "read" then
        local parts = {}
        for i, k in ipairs(op.keys) do
            local e = op.r_values and op.r_values[k]
            parts[i] = ("%s=%s@%s"):format(k, e and val(e.value) or "?", e and e.index or "?")
        end
        return ("read(%s) -> %s"):format(table.concat(op.keys, ", "),
            op.outcome == "ok" and table.concat(parts, " ") or "unknown")
    end
    local subs = {}
    for i, sub in ipairs(op.ops) do
        subs[i] = sub.kind == "put" and ("put(%s, %s, %d)"):format(sub.key, val(sub.value), sub.index)
            or ("delete(%s, %d)"):format(sub.key, sub.index)
    end
    local result
    if op.outcome == "ok" then
        result = "true, " .. tostring(op.r_index)
    elseif op.outcome == "fail" then
        local parts = {}
        for k, e in pairs(op.r_conflicts) do
            parts[#parts + 1] = ("%s at %s %s"):format(k, e.index, val(e.value))
        end
        table.sort(parts)
        result = "false, " .. table.concat(parts, "; ")
    else
        result = "unknown (" .. tostring(op.err or op.code) .. ")"
    end
    return ("txn{%s} -> %s"):format(table.concat(subs, ", "), result)
end

return multi
