--- The embedded backend: the Lua face of the C SQLite store (csrc/embedded.c),
-- implementing the backend interface of store.lua.
local check = require "cmpxchg.check"
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"
local runtime = require "cmpxchg.runtime"

local json_decode = json.decode

local Embedded = {}
Embedded.__index = Embedded

local function decode(text, key)
    local value, err = json.decode(text)
    if value == nil then
        return nil, ("decode: stored value of '%s' is not JSON: %s"):format(key, err), "decode"
    end
    return value
end

--[[ Inside nginx the C store never waits for the file's write lock: SQLite's
busy handler sleeps in C and would freeze the worker (all its requests) while
another worker or process writes. There the busy timeout is 0, a write that
finds the file locked fails at once with "timeout" (nothing applied: the
transaction is rolled back), and it is tried again here after an ngx.sleep,
until the store's timeout. The file I/O itself stays blocking, as nginx's own
file access is: a write is a few syscalls (an fsync with sync = "full"). In a
phase that cannot yield (log, header_filter, ...) the store works as long as
it needs no wait: a busy file is then reported at once. ]]

--- What handle[method](handle, ...) answered (a, b, c), and inside nginx,
-- when the file was busy, the answer of trying again after pauses.
local function unless_busy(handle, wait, method, a, b, c, ...)
    if a ~= nil or c ~= "timeout" or not runtime.nginx then return a, b, c end
    if not runtime.can_yield() then
        return nil, ("%s (the %s phase cannot wait for it)"):format(b, runtime.phase()), c
    end
    local deadline = runtime.monotime() + wait
    local pause = 0.001
    while true do
        local left = deadline - runtime.monotime()
        if left <= 0 then return a, b, c end
        runtime.sleep(math.min(pause, left))
        pause = math.min(pause * 2, 0.05)
        a, b, c = handle[method](handle, ...)
        if a ~= nil or c ~= "timeout" then return a, b, c end
    end
end

--- Calls handle[method](handle, ...), retrying busy attempts inside nginx.
local function call(handle, wait, method, ...)
    local a, b, c = handle[method](handle, ...)
    return unless_busy(handle, wait, method, a, b, c, ...)
end

-- the options of cmpxchg.open an embedded store reads
local OPTIONS = { database = "string", timeout = "number", sweep_interval = "number",
                  sync = "string" }
Embedded.OPTIONS = OPTIONS

--- Opens `path` (":memory:" for a private in-memory store).
-- opts: database (namespace), timeout (seconds a write waits for the file's
-- write lock), sweep_interval (seconds between @expires sweeps, < 0: never),
-- sync ("normal": survives a killed process; "full": survives power loss).
function Embedded.open(path, opts)
    check.options(opts, OPTIONS, 2, "open")
    if opts.timeout ~= nil then check.seconds(opts.timeout, "timeout", 2, "open") end
    if opts.sync ~= nil and opts.sync ~= "normal" and opts.sync ~= "full" then
        check.argerror(2, "open", "option 'sync' must be \"normal\" or \"full\"")
    end
    -- SQLite takes both as C strings: cut at a NUL, two names would be one
    if path:find("\0", 1, true) then
        check.argerror(1, "open", "path must not contain a NUL byte")
    elseif opts.database and opts.database:find("\0", 1, true) then
        check.argerror(2, "open", "option 'database' must not contain a NUL byte")
    end
    local wait = opts.timeout or 5
    local settings = {
        namespace = opts.database or "",
        busy_timeout = runtime.nginx and 0 or math.floor(wait * 1000),
        sweep_interval = opts.sweep_interval or 60,
        sync = opts.sync or "normal",
    }
    local handle, err, code = call({ open = function(_, ...) return core.embedded_open(...) end },
        wait, "open", path, settings)
    if not handle then return nil, err, code end
    return setmetatable({ handle = handle, path = path, settings = settings, wait = wait,
                          private = path == ":memory:" }, Embedded)
end

function Embedded:describe()
    return "embedded " .. self.path
end

function Embedded:put(key, text, index, expires)
    local ok, cur_index, cur_text = call(self.handle, self.wait, "put", key, text, index,
        expires)
    if ok ~= false or cur_text == nil then return ok, cur_index, cur_text end
    local value, err, code = decode(cur_text, key)
    if value == nil then return nil, err, code end
    return false, cur_index, value
end

function Embedded:delete(key, index)
    local ok, cur_index, cur_text = call(self.handle, self.wait, "delete", key, index)
    if ok == nil or cur_text == nil then return ok, cur_index, cur_text end
    local value, err, code = decode(cur_text, key)
    if value == nil then return nil, err, code end
    return ok, cur_index, value
end

-- SQLite sets no limit of its own on a transaction: it holds the file's write
-- lock while it runs; each value is held to SQLITE_MAX_LENGTH (1e9 bytes), as
-- a put's is, and SQLite refuses a longer one itself (io: string or blob too big)
Embedded.txn_limits = {}

function Embedded:transaction(ops)
    local ok, index, failures = call(self.handle, self.wait, "transaction", ops)
    if ok ~= false then return ok, index, failures end
    local conflicts = index
    for i, f in ipairs(conflicts) do
        local entry = { key = f.key, index = f.index }
        if f.json then
            local value, err, code = decode(f.json, f.key)
            if value == nil then return nil, err, code end
            entry.value = value
        end
        conflicts[i] = entry
    end
    return false, conflicts
end

function Embedded:get(key)
    -- call() unrolled: a read is most of what stores do. On an error `text`
    -- is the message: only an index says the read worked.
    local index, text, code = self.handle:get(key)
    if index == nil then
        index, text, code = unless_busy(self.handle, self.wait, "get", index, text, code, key)
        if index == nil then return nil, text, code end
    end
    if text == nil then return index, nil end       -- absent
    local value = json_decode(text)
    if value == nil then return decode(text, key) end     -- its error
    return index, value
end

function Embedded:get_many(keys)
    local indexes, texts, code = call(self.handle, self.wait, "get_many", keys)
    if indexes == nil then return nil, texts, code end
    local results = {}
    for i = 1, #keys do
        local entry = { index = indexes[i] }
        if texts[i] then
            local value, err, dcode = decode(texts[i], keys[i])
            if value == nil then return nil, err, dcode end
            entry.value = value
        end
        results[i] = entry
    end
    return results
end

function Embedded:list(prefix, start, page_size)
    local rows, err, code = call(self.handle, self.wait, "list", prefix, start, page_size)
    if rows == nil then return nil, err, code end
    for i = 1, #rows do
        local row = rows[i]
        local value, derr, dcode = decode(row.json, row.key)
        if value == nil then return nil, derr, dcode end
        row.value, row.json = value, nil
    end
    return rows
end

function Embedded:sweep()
    return call(self.handle, self.wait, "sweep")
end

function Embedded:close()
    return self.handle:close()
end

return Embedded
