--- The public store object: argument checks, JSON encoding and the closed
-- state, in front of a backend. Every backend gets the same checks here, so
-- they fail the same way.
--
-- The backend interface (embedded.lua, ravendb.lua, etcd.lua implement it;
-- lock.lua, lease.lua and this file use it):
--
--   put(key, json, index, expires [, write_id])
--                                   -> true, index | false, index, value
--   delete(key, index [, write_id]) -> true, index, value | false, index, value
--   get(key)                        -> index, value (0, nil when absent)
--   get_many(keys)                  -> array of {index =, value =}, in key order
--   list(prefix, start, page_size)  -> array of {key =, index =, value =}
--   transaction(ops [, write_id])   -> true, index [, change_vectors]
--                                      | false, conflicts
--                                   all the operations or none, each write
--                                   with the one index returned; ops are
--                                   checked and encoded by transaction.lua
--                                   (its header gives their shape), within
--                                   the backend's txn_limits; conflicts: an
--                                   array, in the order of ops, of the
--                                   operations whose compare failed,
--                                   {key =, index =, value =} as a failed put
--                                   returns them (value left out when it
--                                   could not be read at that index), or
--                                   {id =} for a document; change_vectors:
--                                   {[id] = change vector} of the documents
--                                   written. An outcome the backend cannot
--                                   settle is nil, "timeout: ...", never a
--                                   guessed true or false. write_id as for put
--   txn_limits                      -> {ops =, ops_why =, bytes =, bytes_why =,
--                                      documents = true|nil}: what one
--                                      transaction may hold (nil: no limit of
--                                      the backend's own); txn_cost(op), when
--                                      present, is what an operation counts
--                                      towards `bytes`
--   get_document(id), query(rql, params_json)
--                                   documents and RQL (RavenDB only: see
--                                   documents.lua)
--   describe()                      -> text for messages and tostring
--   close()
--   private                         -> true when no other connection can see
--                                      the data (":memory:"): nothing renews it
--   write_ids                       -> true when put and delete take a write_id
--                                      (a string) that the server deduplicates:
--                                      the same write sent again with it is
--                                      applied at most once and answered as the
--                                      first time (RavenDB's raft-request-id);
--                                      other backends ignore the argument
--
-- Writes take JSON text (the store encodes once); reads return decoded
-- values; keys reach a backend checked (check.key). Note the order of get:
-- index first, unlike store:get. Any call may return nil, "<code>: <detail>",
-- "<code>".
local check = require "cmpxchg.check"
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"
local renewal = require "cmpxchg.renewal"
local runtime = require "cmpxchg.runtime"

local argerror = check.argerror

local Store = {}                -- methods
local store_mt = {
    __name = "cmpxchg.Store",
    __index = Store,
}

local store = { metatable = store_mt }

--- Wraps an opened backend; `origin` = {target =, options =} is how it was
-- opened (a renewal thread opens its own store from it).
function store.new(backend, origin)
    return setmetatable({ backend = backend, origin = origin }, store_mt)
end

--- Every call into a store starts here: the backend behind `self`, raising
-- on anything else or a closed store. It also hands the store's locks what
-- their renewers learned since the last call, so a loss found by a renewal
-- thread becomes on_lost in the caller's Lua, at this call.
function store.enter(self, fname)
    if getmetatable(self) ~= store_mt then
        argerror(1, fname, "cmpxchg.Store expected, got " .. check.typename(self))
    end
    local backend = self.backend
    if backend == nil then
        check.raise("attempt to use a closed store")
    end
    if self.renewal then renewal.deliver(self) end
    return backend
end
local enter = store.enter

local function encode(value, n, fname)
    if value == nil then
        argerror(n, fname, "value expected (use cmpxchg.null to store JSON null)")
    end
    local text, err = json.encode(value)
    if text == nil then argerror(n, fname, err) end
    return text
end

--- Raises on an option of `opts` that `known` does not name.
local function check_known(opts, known, n, fname)
    for k in pairs(opts) do
        if not known[k] then argerror(n, fname, "unknown option '" .. tostring(k) .. "'") end
    end
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

local PUT_OPTIONS = { expires = true }

--- ok, index, value = store:put(key, value, index [, {expires = epoch}])
-- index 0 creates only. ok=true: stored, index is the new version and value
-- the one given. ok=false: compare failed, index/value are the current ones
-- (0, nil when the key is absent).
function Store:put(key, value, index, opts)
    local backend = enter(self, "put")
    check.key(key, 1, "put")
    local text = encode(value, 2, "put")
    index = check.index(index, 3, "put")
    if opts ~= nil then check_known(check.type(opts, "table", 4, "put"), PUT_OPTIONS, 4, "put") end
    local expires = check_expires(opts, 4, "put")
    local ok, new_index, current = backend:put(key, text, index, expires)
    if ok then return true, new_index, value end
    return ok, new_index, current
end

--- value, index = store:get(key); absent: nil, 0
function Store:get(key)
    local backend = enter(self, "get")
    check.key(key, 1, "get")
    local index, value, code = backend:get(key)
    if index == nil then return nil, value, code end
    return value, index
end

--- map = store:get_many({k1, k2, ...}) -> { [key] = {value =, index =} },
-- absent keys left out. All keys are read from one snapshot.
function Store:get_many(keys)
    local backend = enter(self, "get_many")
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

local LIST_OPTIONS = { start = true, page_size = true }

--- items = store:list([prefix] [, {start =, page_size =}]) -> array of
-- {key =, value =, index =} ordered by key (case-insensitively).
function Store:list(prefix, opts)
    local backend = enter(self, "list")
    prefix = prefix or ""
    check.type(prefix, "string", 1, "list")
    local _, problem = core.fold_key(prefix)
    if problem then argerror(1, "list", "prefix is " .. problem) end
    local start, page_size = 0, nil
    if opts ~= nil then
        check_known(check.type(opts, "table", 2, "list"), LIST_OPTIONS, 2, "list")
        if opts.start ~= nil then start = check.index(opts.start, 2, "list") end
        if opts.page_size ~= nil then
            page_size = check.index(opts.page_size, 2, "list")
            if page_size == 0 then argerror(2, "list", "page_size must be positive") end
        end
    end
    return backend:list(prefix, start, page_size)
end

--- ok, index, value = store:delete(key, index): the shape of put; on success
-- value is the deleted one.
function Store:delete(key, index)
    local backend = enter(self, "delete")
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
    check_known(check.type(opts, "table", 3, "update"), UPDATE_OPTIONS, 3, "update")
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
    enter(self, "update")
    check.key(key, 1, "update")
    check.type(fn, "function", 2, "update")
    local retries, expires = update_options(opts)
    local step, attempts = BACKOFF_MIN, 0
    while true do
        local index, current, code = enter(self, "update"):get(key)
        if index == nil then return nil, current, code end
        local value = fn(current)
        if value == nil then return current, index end
        local text, why = json.encode(value)
        if text == nil then
            argerror(2, "update", "fn returned a value JSON cannot encode: " .. why)
        end
        -- fn may have used (or closed) the store: check it again
        local ok, new_index, failure = enter(self, "update"):put(key, text, index, expires)
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
        renewal.stop_all(self)
        self.backend = nil      -- closed before the backend is released
        backend:close()
    end
    return true
end

--[[ Transactions and documents (transaction.lua, documents.lua; required on
first use, since they build on this file) ]]

--- ok, index [, change_vectors] = store:transaction(ops)
function Store:transaction(ops)
    return require("cmpxchg.transaction").run(self, ops)
end

--- values, index = store:update_many(keys, fn [, opts])
function Store:update_many(keys, fn, opts)
    return require("cmpxchg.transaction").update_many(self, keys, fn, opts)
end

--- document, change_vector = store:get_document(id) (RavenDB)
function Store:get_document(id)
    return require("cmpxchg.documents").get(self, id)
end

--- results = store:query(rql [, params]) (RavenDB)
function Store:query(rql, params)
    return require("cmpxchg.documents").query(self, rql, params)
end

--[[ Locks (lock.lua; required on first use, since lock.lua builds on this
file) ]]

--- lock, err, code = store:lock(key [, opts])
function Store:lock(key, opts)
    return require("cmpxchg.lock").acquire(self, key, opts)
end

--- ok, ... = store:with_lock(key, opts, fn, ...)
function Store:with_lock(key, opts, fn, ...)
    return require("cmpxchg.lock").with_lock(self, key, opts, fn, ...)
end

--[[ The recipes built on locks, one file each, required on first use:
semaphore.lua, election.lua ]]

--- sem = store:semaphore(name, n [, opts])
function Store:semaphore(name, n, opts)
    return require("cmpxchg.semaphore").new(self, name, n, opts)
end

--- e = store:election(name [, opts])
function Store:election(name, opts)
    return require("cmpxchg.election").new(self, name, opts)
end

store_mt.__close = function(self) self:close() end

store_mt.__tostring = function(self)
    if self.backend == nil then return "cmpxchg.Store (closed)" end
    return ("cmpxchg.Store (%s)"):format(self.backend:describe())
end

return store
