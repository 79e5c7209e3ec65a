--- The public store object: argument checks, JSON encoding and the closed
-- state, in front of a backend (see embedded.lua for the backend interface).
-- Every backend gets the same checks here, so they fail the same way.
local check = require "cmpxchg.check"
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"
local runtime = require "cmpxchg.runtime"

local argerror = check.argerror

local Store = {}                -- methods
local store_mt = {
    __name = "cmpxchg.Store",
    __index = Store,
}

local store = { metatable = store_mt }

--- Wraps an opened backend.
function store.new(backend)
    return setmetatable({ backend = backend }, store_mt)
end

--- The store behind `self`, raising on anything else or a closed store.
local function backend_of(self, fname)
    if getmetatable(self) ~= store_mt then
        argerror(1, fname, "cmpxchg.Store expected, got " .. check.typename(self))
    end
    local backend = self.backend
    if backend == nil then
        check.raise("attempt to use a closed store")
    end
    -- locks renewed by a thread learn of a loss on the next call from Lua
    if self.renewing and next(self.renewing) then
        local locks = {}
        for l in pairs(self.renewing) do locks[#locks + 1] = l end
        for _, l in ipairs(locks) do l:sync() end
    end
    return backend
end
store.backend_of = backend_of

local function encode(value, n, fname)
    if value == nil then
        argerror(n, fname, "value expected (use cmpxchg.null to store JSON null)")
    end
    local text, err = json.encode(value)
    if text == nil then argerror(n, fname, err) end
    return text
end

local function check_expires(opts, n, fname)
    if opts == nil then return nil end
    check.type(opts, "table", n, fname)
    local expires = opts.expires
    if expires ~= nil and (type(expires) ~= "number" or expires ~= expires
            or expires < 0 or expires >= 253402300800) then
        argerror(n, fname, "expires must be epoch seconds, got " .. tostring(expires))
    end
    return expires
end

--- ok, index, value = store:put(key, value, index [, {expires = epoch}])
-- index 0 creates only. ok=true: stored, index is the new version and value
-- the one given. ok=false: compare failed, index/value are the current ones
-- (0, nil when the key is absent).
function Store:put(key, value, index, opts)
    local backend = backend_of(self, "put")
    check.key(key, 1, "put")
    local text = encode(value, 2, "put")
    index = check.index(index, 3, "put")
    local expires = check_expires(opts, 4, "put")
    local ok, new_index, current = backend:put(key, text, index, expires)
    if ok then return true, new_index, value end
    return ok, new_index, current
end

--- value, index = store:get(key); absent: nil, 0
function Store:get(key)
    local backend = backend_of(self, "get")
    check.key(key, 1, "get")
    local index, value, code = backend:get(key)
    if index == nil then return nil, value, code end
    return value, index
end

--- map = store:get_many({k1, k2, ...}) -> { [key] = {value =, index =} },
-- absent keys left out. All keys are read from one snapshot.
function Store:get_many(keys)
    local backend = backend_of(self, "get_many")
    check.type(keys, "table", 1, "get_many")
    -- one plain copy, read once through any __index or __len: the backend
    -- gets exactly the keys checked here
    local list, n = {}, #keys
    if type(n) ~= "number" then argerror(1, "get_many", "its length (__len) is not a number") end
    for i = 1, n do
        local key = keys[i]
        local problem = check.key_problem(key)
        if problem then argerror(1, "get_many", ("key #%d: %s"):format(i, problem)) end
        list[i] = key
    end
    local map = {}
    if #list == 0 then return map end
    local results, err, code = backend:get_many(list)
    if results == nil then return nil, err, code end
    for i = 1, #list do
        local r = results[i]
        if r.index > 0 then map[list[i]] = { value = r.value, index = r.index } end
    end
    return map
end

local RESERVED = "rvn-atomic/"

--- items = store:list([prefix] [, {start =, page_size =}]) -> array of
-- {key =, value =, index =} ordered by key (case-insensitively).
function Store:list(prefix, opts)
    local backend = backend_of(self, "list")
    prefix = prefix or ""
    check.type(prefix, "string", 1, "list")
    local _, problem = core.fold_key(prefix)
    if problem then argerror(1, "list", "prefix is " .. problem) end
    local start, page_size = 0, nil
    if opts ~= nil then
        check.type(opts, "table", 2, "list")
        if opts.start ~= nil then start = check.index(opts.start, 2, "list") end
        if opts.page_size ~= nil then
            page_size = check.index(opts.page_size, 2, "list")
            if page_size == 0 then argerror(2, "list", "page_size must be positive") end
        end
    end
    local items, err, code = backend:list(prefix, start, page_size)
    if items == nil then return nil, err, code end
    local n = 0      -- RavenDB lists its atomic guards too: never hand them out
    for i = 1, #items do
        local item = items[i]
        if item.key:lower():sub(1, #RESERVED) ~= RESERVED then
            n = n + 1
            items[n] = item
        end
    end
    for i = #items, n + 1, -1 do items[i] = nil end
    return items
end

--- ok, index, value = store:delete(key, index): the shape of put; on success
-- value is the deleted one.
function Store:delete(key, index)
    local backend = backend_of(self, "delete")
    check.key(key, 1, "delete")
    index = check.index(index, 2, "delete")
    return backend:delete(key, index)
end

--[[ Read-modify-write. A lost race is retried after a pause with full jitter
(uniform in [BACKOFF_MIN, step], step doubling up to BACKOFF_MAX: the lock's
defaults), taken through the runtime seam so that it yields where sleeping
must not block. ]]

local UPDATE_RETRIES = 10
local BACKOFF_MIN, BACKOFF_MAX = 0.005, 0.1
local UPDATE_OPTIONS = { retries = true, expires = true }

--- The pause before the next attempt, and the step after it.
function store.backoff(step, min, max)
    return min + runtime.random() * (step - min), math.min(step * 2, max)
end

local function update_options(opts)
    if opts == nil then return UPDATE_RETRIES, nil end
    check.type(opts, "table", 3, "update")
    for k in pairs(opts) do
        if not UPDATE_OPTIONS[k] then
            argerror(3, "update", "unknown option '" .. tostring(k) .. "'")
        end
    end
    local retries = UPDATE_RETRIES
    if opts.retries ~= nil then
        local r = opts.retries
        if type(r) ~= "number" or r ~= r or r < 0 or (r ~= math.huge and r ~= math.floor(r)) then
            argerror(3, "update", "retries must be a non-negative integer, got " .. tostring(r))
        end
        retries = r
    end
    return retries, check_expires(opts, 3, "update")
end

--- value, index = store:update(key, fn [, {retries = 10, expires = epoch}])
-- Compare-and-set read-modify-write: reads the value and its index, writes
-- fn(value) (fn gets nil when the key is absent) with the index just read (0
-- when absent). When another writer got in between, waits (backoff with full
-- jitter), reads again and calls fn again, at most `retries` more times.
-- Returns the value written and its new index; when fn returns nil, nothing is
-- written and the current value and index are returned (nil, 0 when absent).
-- After the last lost race: nil, "conflict: ...", "conflict". A store failure:
-- nil, err, code (for a write that failed so, the outcome is unknown). Errors
-- raised by fn propagate unchanged, and nothing is written then.
function Store:update(key, fn, opts)
    backend_of(self, "update")
    check.key(key, 1, "update")
    check.type(fn, "function", 2, "update")
    local retries, expires = update_options(opts)
    local step, attempts = BACKOFF_MIN, 0
    while true do
        local index, current, code = backend_of(self, "update"):get(key)
        if index == nil then return nil, current, code end
        local value = fn(current)
        if value == nil then return current, index end
        local text, why = json.encode(value)
        if text == nil then
            argerror(2, "update", "fn returned a value JSON cannot encode: " .. why)
        end
        -- fn may have used (or closed) the store: check it again
        local ok, new_index, failure = backend_of(self, "update"):put(key, text, index, expires)
        if ok then return value, new_index end
        if ok == nil then return nil, new_index, failure end
        attempts = attempts + 1
        if attempts > retries then
            return nil, ("conflict: '%s' was changed by another writer at each of %d %s")
                :format(key, attempts, attempts == 1 and "attempt" or "attempts"), "conflict"
        end
        local pause
        pause, step = store.backoff(step, BACKOFF_MIN, BACKOFF_MAX)
        runtime.sleep(pause)
    end
end

--- store:close() -> true; idempotent. Locks taken from the store stay in the
-- store until released by someone else or expired.
function Store:close()
    if getmetatable(self) ~= store_mt then
        argerror(1, "close", "cmpxchg.Store expected, got " .. check.typename(self))
    end
    local backend = self.backend
    if backend ~= nil then
        for l in pairs(self.renewing or {}) do l:stop_renewing() end
        self.backend = nil      -- closed before the backend is released
        backend:close()
    end
    return true
end

store_mt.__close = function(self) self:close() end

store_mt.__tostring = function(self)
    if self.backend == nil then return "cmpxchg.Store (closed)" end
    return ("cmpxchg.Store (%s)"):format(self.backend:describe())
end

return store
