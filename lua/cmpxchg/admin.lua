--- The operator's view of locks: which keys under a prefix hold a lease,
-- whose, and until when; and breaking a lease its holder abandoned.
-- It reads only what the lock value says, so it sees every client's locks
-- (ours, the seed's RavenDbProcessMonitor, the docs' SharedResource) on
-- every backend, and it breaks one only by CAS on the index the operator
-- saw, so a lease taken over meanwhile is never the one removed.
local check = require "cmpxchg.check"
local core = require "cmpxchg.core"
local runtime = require "cmpxchg.runtime"
local store = require "cmpxchg.store"

local argerror = check.argerror

local admin = {}

-- The expiry fields of the known lock values: ours and the seed's, then the
-- docs' SharedResource.
local FIELDS = { "ExpiresAt", "ReservedUntil" }

--- The fields to look for: a caller's own expires_field first.
local function fields_of(opts, n, fname)
    if opts == nil then return FIELDS end
    check.type(opts, "table", n, fname)
    local field = opts.expires_field
    if field == nil then return FIELDS end
    if type(field) ~= "string" or field == "" then
        argerror(n, fname, "expires_field must be a non-empty string")
    end
    return { field, FIELDS[1], FIELDS[2] }
end

local function describe(item, fields, now)
    local value = item.value
    if type(value) ~= "table" then return nil end
    for _, field in ipairs(fields) do
        local at = value[field]
        local ends = type(at) == "string" and core.parse_time(at)
        if ends then
            local pid = value.Pid
            return {
                key = item.key,
                token = item.index,
                owner = type(value.Owner) == "string" and value.Owner or nil,
                host = type(value.Host) == "string" and value.Host or nil,
                -- cjson decodes 42 as 42.0; a pid reads better as an integer
                pid = type(pid) == "number" and (check.tointeger(pid) or pid) or nil,
                field = field,
                expires_at = ends,
                remaining = ends - now,
                -- as lock.lua decides a takeover: only strictly past the end
                expired = now > ends,
                value = value,
            }
        end
    end
    return nil
end

--- desc = admin.describe(item [, opts]): the lock description of one
-- `{key =, value =, index =}` item (as store:list gives), or nil when its
-- value is not a lock.
function admin.describe(item, opts)
    check.type(item, "table", 1, "describe")
    return describe(item, fields_of(opts, 2, "describe"), runtime.time())
end

--- locks, err, code = admin.locks(store, prefix [, opts]): the locks among
-- the items whose key starts with `prefix`, ordered by key, each
-- `{key, token, owner, host, pid, field, expires_at, remaining, expired, value}`.
-- An item is a lock when its value is a table with a date-time string in
-- `ExpiresAt`, `ReservedUntil` or `opts.expires_field`; others are left out.
function admin.locks(st, prefix, opts)
    store.enter(st, "locks")
    check.type(prefix, "string", 2, "locks", true)
    local _, problem = core.fold_key(prefix or "")
    if problem then argerror(2, "locks", "prefix is " .. problem) end
    local fields = fields_of(opts, 3, "locks")
    local items, err, code = st:list(prefix)
    if items == nil then return nil, err, code end
    local now = runtime.time()  -- one instant for all, so they compare
    local out = {}
    for _, item in ipairs(items) do
        out[#out + 1] = describe(item, fields, now)
    end
    return out
end

--- ok, err, index = admin.break_lock(store, key, index): deletes the lock
-- only when `index` (the token the operator saw) is still the current one.
-- `true`; `false, "changed: ...", current_index` when the lease was released,
-- renewed or taken over meanwhile (0 when the key is gone); `nil, err, code`
-- on a store failure (the outcome is then unknown: list again).
function admin.break_lock(st, key, index)
    store.enter(st, "break_lock")
    check.key(key, 2, "break_lock")
    index = check.index(index, 3, "break_lock")
    if index == 0 then argerror(3, "break_lock", "index must be positive") end
    local ok, current, code = st:delete(key, index)
    if ok == nil then return nil, current, code end
    if ok then return true end
    if current == 0 then
        return false, ("changed: lock '%s' is gone (it was at index %d)"):format(key, index), 0
    end
    return false, ("changed: lock '%s' is now at index %d, not %d"):format(key, current, index),
        current
end

return admin
