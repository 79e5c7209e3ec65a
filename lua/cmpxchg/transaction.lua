--- Transactions over several keys: store:transaction and store:update_many.
-- The operations are checked and encoded here, once for every backend, so
-- that every backend refuses the same misuse the same way; each backend's
-- own limits (txn_limits) are enforced here too, before anything is sent.
-- A backend gets the operations as
--   {kind = "put", key =, text = JSON, index =, expires = epoch|nil}
--   {kind = "delete", key =, index =}
--   {kind = "put_document", id =, text = JSON of the document, change_vector =}
--   {kind = "delete_document", id =, change_vector =}
-- (documents only where backend.txn_limits.documents) and answers as store.lua
-- describes the backend's `transaction`.
local check = require "cmpxchg.check"
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"
local runtime = require "cmpxchg.runtime"
local store = require "cmpxchg.store"

local argerror = check.argerror
local tointeger = check.tointeger

local transaction = {}

-- the fields each kind of operation may have
local FIELDS = {
    put = { op = true, key = true, value = true, index = true, expires = true },
    delete = { op = true, key = true, index = true },
    put_document = { op = true, id = true, document = true, collection = true,
                     change_vector = true },
    delete_document = { op = true, id = true, change_vector = true },
}

-- a document's atomic guard is the compare-exchange item "rvn-atomic/<id>",
-- whose key is held to the 512-byte limit: so ids to 512 - 11 bytes
local MAX_DOCUMENT_ID = 512 - #"rvn-atomic/"

-- metadata the server writes itself: a document read back carries them, and
-- they are left out when it is written again
local SERVER_METADATA = { ["@id"] = true, ["@change-vector"] = true,
                          ["@last-modified"] = true, ["@flags"] = true }

local function index_problem(v)
    if type(v) ~= "number" then return "index expected, got " .. check.typename(v) end
    local i = tointeger(v)
    if i == nil and v == math.floor(v) and v > -2^53 and v < 2^53 then
        i = tointeger(v + 0.0) or v
    end
    if i == nil or v ~= v then return "index must be an integer, got " .. tostring(v) end
    if i < 0 then return "index must not be negative, got " .. tostring(i) end
    return nil, i
end

--- Why `id` cannot be a document id in a transaction, or nil.
local function id_problem(id)
    if type(id) ~= "string" then return "id: string expected, got " .. check.typename(id) end
    if #id > MAX_DOCUMENT_ID then
        return ("id is %d bytes, the limit is %d (its atomic guard 'rvn-atomic/<id>' is a "
            .. "compare-exchange key)"):format(#id, MAX_DOCUMENT_ID)
    end
    local problem = core.key_problem(id)
    if problem then return (problem:gsub("^key", "id")) end
    local last = id:sub(-1)
    if last == "/" or last == "|" then
        -- the server would make up an id (identities): not in a cluster transaction
        return "id must not end with '/' or '|' in a transaction"
    end
    return nil
end

--- The JSON text of the document to write: its own members, its
-- @metadata without what the server writes itself, and @collection.
local function document_text(op)
    local doc = op.document
    if type(doc) ~= "table" then
        return nil, "document: table expected, got " .. check.typename(doc)
    end
    if #doc > 0 then return nil, "document must be a JSON object, got an array" end
    local copy, metadata = {}, {}
    for k, v in pairs(doc) do
        if type(k) ~= "string" then
            return nil, "document must be a JSON object (string keys), got key " .. tostring(k)
        end
        if k == "@metadata" then
            if type(v) ~= "table" then return nil, "document's @metadata must be a table" end
            for mk, mv in pairs(v) do
                if not SERVER_METADATA[mk] then metadata[mk] = mv end
            end
        else
            copy[k] = v
        end
    end
    if op.collection ~= nil then
        if type(op.collection) ~= "string" or op.collection == "" then
            return nil, "collection must be a non-empty string"
        end
        metadata["@collection"] = op.collection
    end
    if next(metadata) ~= nil then copy["@metadata"] = metadata end
    local text, err = json.encode(copy)
    if text == nil then return nil, "document: " .. err end
    if text:sub(1, 1) ~= "{" then text = "{}" end       -- cjson's empty table is {}
    return text
end

local function expires_problem(v)
    if v == nil then return nil end
    if type(v) ~= "number" or v ~= v or v < 0 or v >= 253402300800 then
        return "expires must be epoch seconds, got " .. tostring(v)
    end
    return nil
end

--- Checks and encodes the operations of `ops` for `backend`; raises as
-- argument `n` of `fname` on misuse or a transaction over the backend's
-- limits. Returns the backend's operations.
function transaction.prepare(backend, ops, n, fname)
    check.type(ops, "table", n, fname)
    local count = #ops
    local limits = backend.txn_limits or {}
    local function bad(i, msg)
        argerror(n, fname, i and ("operation #%d: %s"):format(i, msg) or msg)
    end
    if count == 0 then bad(nil, "a transaction needs at least one operation") end
    for k in pairs(ops) do
        if type(k) ~= "number" or k < 1 or k > count or k ~= math.floor(k) then
            bad(nil, "operations must be an array (a list without holes)")
        end
    end
    if limits.ops and count > limits.ops then
        bad(nil, ("%d operations: %s"):format(count, limits.ops_why))
    end
    local out, seen, bytes = {}, {}, 0
    for i = 1, count do
        local op = ops[i]
        if type(op) ~= "table" then bad(i, "table expected, got " .. check.typename(op)) end
        local kind = op.op
        local fields = FIELDS[kind]
        if not fields then
            bad(i, ("op must be \"put\", \"delete\", \"put_document\" or \"delete_document\", "
                .. "got %s"):format(type(kind) == "string" and ("%q"):format(kind)
                or check.typename(kind)))
        end
        for k in pairs(op) do
            if not fields[k] then
                bad(i, ("unknown field '%s' for %s"):format(tostring(k), kind))
            end
        end
        local o = { kind = kind }
        if kind == "put" or kind == "delete" then
            local problem = check.key_problem(op.key)
            if problem then bad(i, problem) end
            local index
            problem, index = index_problem(op.index)
            if problem then bad(i, problem) end
            o.key, o.index = op.key, index
            local folded = "k" .. core.fold_key(op.key)
            if seen[folded] then
                bad(i, ("key '%s' is written twice (operation #%d too)"):format(op.key,
                    seen[folded]))
            end
            seen[folded] = i
            if kind == "put" then
                if op.value == nil then
                    bad(i, "value expected (use cmpxchg.null to store JSON null)")
                end
                local text, err = json.encode(op.value)
                if text == nil then bad(i, err) end
                problem = expires_problem(op.expires)
                if problem then bad(i, problem) end
                o.text, o.expires = text, op.expires
            end
        else
            if not limits.documents then
                bad(i, ("documents are RavenDB's; an %s store has compare-exchange items only "
                    .. "(write the record as an item)"):format(backend:describe():match("^%S+")))
            end
            local problem = id_problem(op.id)
            if problem then bad(i, problem) end
            if op.change_vector ~= nil and (type(op.change_vector) ~= "string"
                    or op.change_vector == "") then
                bad(i, "change_vector must be a non-empty string (the one get_document returned)")
            end
            o.id, o.change_vector = op.id, op.change_vector
            local folded = "d" .. core.fold_key(op.id)
            if seen[folded] then
                bad(i, ("document '%s' is written twice (operation #%d too)"):format(op.id,
                    seen[folded]))
            end
            seen[folded] = i
            if kind == "put_document" then
                local text, err = document_text(op)
                if text == nil then bad(i, err) end
                o.text = text
            end
        end
        bytes = bytes + (backend.txn_cost and backend:txn_cost(o)
            or #(o.key or o.id) + #(o.text or ""))
        out[i] = o
    end
    if limits.bytes and bytes > limits.bytes then
        bad(nil, ("%d bytes: %s"):format(bytes, limits.bytes_why))
    end
    return out
end

-- failures after which a transaction may or may not have been applied
local AMBIGUOUS = { timeout = true, connect = true }

--[[ store:transaction(ops) -> true, index [, change_vectors] | false, conflicts
| nil, err, code. A transaction whose outcome is unknown (a timeout, a dropped
connection) on a backend whose writes carry an id the server deduplicates
(RavenDB's raft-request-id) is sent once more with the same id: the server
applies it at most once and answers as the first time, so that answer is
definite. Elsewhere the backend settles it itself, or answers timeout. ]]
local function commit(st, prepared)
    local id = store.enter(st, "transaction").write_ids and runtime.uuid() or nil
    local ok, a, b = store.enter(st, "transaction"):transaction(prepared, id)
    if ok == nil and AMBIGUOUS[b] and id then
        local ok2, a2, b2 = store.enter(st, "transaction"):transaction(prepared, id)
        if ok2 ~= nil or not AMBIGUOUS[b2] then return ok2, a2, b2 end
    end
    return ok, a, b
end

function transaction.run(st, ops)
    local backend = store.enter(st, "transaction")
    return commit(st, transaction.prepare(backend, ops, 1, "transaction"))
end

--[[ update_many: read-modify-write over several keys ]]

local UPDATE_RETRIES = 10
local BACKOFF_MIN, BACKOFF_MAX = 0.005, 0.1
local UPDATE_OPTIONS = { retries = true, expires = true }

local function update_options(opts)
    if opts == nil then return UPDATE_RETRIES, nil end
    check.type(opts, "table", 3, "update_many")
    for k in pairs(opts) do
        if not UPDATE_OPTIONS[k] then
            argerror(3, "update_many", "unknown option '" .. tostring(k) .. "'")
        end
    end
    local retries = UPDATE_RETRIES
    if opts.retries ~= nil then
        local r = opts.retries
        if type(r) ~= "number" or r ~= r or r < 0 or (r ~= math.huge and r ~= math.floor(r)) then
            argerror(3, "update_many", "retries must be a non-negative integer, got "
                .. tostring(r))
        end
        retries = r
    end
    local problem = expires_problem(opts.expires)
    if problem then argerror(3, "update_many", problem) end
    return retries, opts.expires
end

--[[ values, index = store:update_many(keys, fn [, {retries =, expires =}])
Reads the keys from one snapshot, calls fn(values) ({[key] = value}, keys as
given, absent ones nil) and writes what it returns ({[key] = new value}) in
one transaction, comparing every key with the index just read. A key fn
leaves out keeps its value but is written back all the same (RavenDB cannot
compare an item without writing it): a present one with its value, an absent
one checked absent; so a change to any of the keys between the read and the
write makes the write fail, and update_many reads and calls fn again (backoff
with full jitter, at most `retries` more times). fn returning nil writes
nothing: the values read are returned with index 0. Returns the values after
the write ({[key] = value}) and the transaction's index; after the last lost
race nil, "conflict: ...", "conflict"; a store failure nil, err, code (for a
write that failed so, the outcome is unknown). ]]
function transaction.update_many(st, keys, fn, opts)
    local backend = store.enter(st, "update_many")
    check.type(keys, "table", 1, "update_many")
    check.type(fn, "function", 2, "update_many")
    local retries, expires = update_options(opts)
    if #keys == 0 then argerror(1, "update_many", "at least one key expected") end
    local seen, given = {}, {}
    for i = 1, #keys do
        local problem = check.key_problem(keys[i])
        if problem then argerror(1, "update_many", ("key #%d: %s"):format(i, problem)) end
        local folded = core.fold_key(keys[i])
        if seen[folded] then
            argerror(1, "update_many", ("key #%d: '%s' is listed twice"):format(i, keys[i]))
        end
        seen[folded], given[keys[i]] = true, true
    end
    local limits = backend.txn_limits or {}
    if limits.ops and #keys > limits.ops then
        argerror(1, "update_many", ("%d keys: %s"):format(#keys, limits.ops_why))
    end
    local step, attempts = BACKOFF_MIN, 0
    while true do
        local map, err, code = st:get_many(keys)
        if map == nil then return nil, err, code end
        local current = {}
        for _, key in ipairs(keys) do current[key] = map[key] and map[key].value end
        local new = fn(current)
        if new == nil then return current, 0 end
        if type(new) ~= "table" then
            argerror(2, "update_many", "fn must return a table of values by key or nil, got "
                .. check.typename(new))
        end
        local ops, after = {}, {}
        for i, key in ipairs(keys) do
            local value, read = new[key], map[key]
            if value == nil and read then value = read.value end
            if value ~= nil then
                ops[i] = { op = "put", key = key, value = value, index = read and read.index or 0,
                           expires = expires }
                after[key] = value
            else
                ops[i] = { op = "delete", key = key, index = 0 }    -- still absent
            end
        end
        for k in pairs(new) do
            if not given[k] then
                argerror(2, "update_many", ("fn returned a value for %s, which is not one of "
                    .. "the keys as given"):format(type(k) == "string" and ("'" .. k .. "'")
                    or tostring(k)))
            end
        end
        local prepared = transaction.prepare(store.enter(st, "update_many"), ops, 2,
            "update_many")
        local done, index, failure = commit(st, prepared)
        if done then return after, index end
        if done == nil then return nil, index, failure end
        attempts = attempts + 1
        if attempts > retries then
            return nil, ("conflict: the keys were changed by another writer at each of %d %s")
                :format(attempts, attempts == 1 and "attempt" or "attempts"), "conflict"
        end
        local pause
        pause, step = store.backoff(step, BACKOFF_MIN, BACKOFF_MAX)
        runtime.sleep(pause)
    end
end

return transaction
