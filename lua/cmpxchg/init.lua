--- cmpxchg: RavenDB-style compare-exchange and distributed locks for Lua.
-- The public entry points: open, type, monitor, locks, break_lock, null,
-- _VERSION. A target's scheme picks the backend; each backend checks the
-- options it reads.
local admin = require "cmpxchg.admin"
local check = require "cmpxchg.check"
local embedded = require "cmpxchg.embedded"
local json = require "cmpxchg.json"
local lock = require "cmpxchg.lock"
local monitor = require "cmpxchg.monitor"
local store = require "cmpxchg.store"
local target_of = require "cmpxchg.target"

local argerror = check.argerror

local cmpxchg = {
    _VERSION = "cmpxchg 0.1.0",
    null = json.null,           -- store JSON null with this
}

-- the backend of each URL scheme
local SCHEMES = { http = "cmpxchg.ravendb", https = "cmpxchg.ravendb",
                  etcd = "cmpxchg.etcd", etcds = "cmpxchg.etcd" }

--- Where cmpxchg.open() keeps its file when neither a target nor
-- $CMPXCHG_URL is given: $XDG_STATE_HOME/cmpxchg/default.db, else
-- $HOME/.local/state/cmpxchg/default.db (the directory is created, mode 0700,
-- and checked, whichever way this path is given to open).
cmpxchg.default_path = target_of.default_path

--- The URLs of a server target (a URL or a table of them, one scheme for
-- all) and that scheme.
local function server_urls(target)
    local urls = type(target) == "table" and target or { target }
    if #urls == 0 then argerror(1, "open", "empty table of URLs") end
    local scheme
    for i, url in ipairs(urls) do
        local s = type(url) == "string" and url:match("^(%a+)://[^/]")
        s = s and s:lower()
        if not SCHEMES[s] then
            argerror(1, "open", ("URL #%d is not an http(s):// or etcd(s):// URL: %s")
                :format(i, check.shown_url(url)))
        elseif scheme and s ~= scheme then
            argerror(1, "open", "URLs of one store must all have the same scheme")
        end
        scheme = s
    end
    return urls, scheme
end

-- the options of cmpxchg.open every store reads, whatever its backend:
-- coalesce = false (wait.lua) keeps the waiters of one nginx worker apart
local STORE_OPTIONS = { coalesce = "boolean" }

--- Raises on an option no backend reads: a misspelt one would otherwise go
-- unnoticed. (Options of another backend than the target's are accepted, so
-- code moves between backends by changing only the target.)
local function check_known(opts)
    check.options(opts, STORE_OPTIONS, 2, "open")
    for k in pairs(opts) do
        local backend = STORE_OPTIONS[k]
        for _, name in pairs(SCHEMES) do
            backend = backend or require(name).OPTIONS[k]
        end
        if not (backend or embedded.OPTIONS[k]) then
            argerror(2, "open", "unknown option '" .. tostring(k) .. "'")
        end
    end
end

--- A copy of `opts` (the renewal thread opens the same store from it).
local function copy(opts)
    local c = {}
    for k, v in pairs(opts) do c[k] = v end
    return c
end

--- store, err, code = cmpxchg.open([target] [, opts])
-- target: nil ($CMPXCHG_URL, else the default file), "http(s)://..." (RavenDB),
-- "etcd(s)://..." (etcd), a table of such URLs (a cluster), or a file path for
-- the embedded store (":memory:" too); host:port without a scheme raises
-- (lua/cmpxchg/target.lua says which strings are files).
function cmpxchg.open(target, opts)
    if opts ~= nil then check.type(opts, "table", 2, "open") end
    opts = copy(opts or {})
    check_known(opts)
    if target == nil then
        target = os.getenv("CMPXCHG_URL")
        if target == "" then target = nil end
        if target and opts.database == nil and os.getenv("CMPXCHG_DATABASE") then
            opts.database = os.getenv("CMPXCHG_DATABASE")
        end
        if target == nil then
            target = cmpxchg.default_path()
            if target == nil then
                return nil, "connect: no default store location: set CMPXCHG_URL or HOME",
                    "connect"
            end
        end
    end
    local kind = target_of.kind(target)
    local backend, err, code
    if kind == "server" then
        local urls
        urls, kind = server_urls(target)
        backend, err, code = require(SCHEMES[kind]).open(urls, opts)
    else
        if kind == "file" then
            local ok
            ok, err, code = target_of.prepare(target, true)
            if not ok then return nil, err, code end
        end
        backend, err, code = embedded.open(target, opts)
        if not backend then err = target_of.explain(target, err, code) end
    end
    if not backend then return nil, err, code end
    return store.new(backend, { target = target, options = opts })
end

--- cmpxchg.type(x) -> "store", "closed store", "lock", "released lock",
-- "semaphore", "election" or nil
function cmpxchg.type(x)
    local mt = getmetatable(x)
    if mt == store.metatable then
        return x.backend and "store" or "closed store"
    elseif mt == lock.metatable then
        return x.released and "released lock" or "lock"
    elseif mt ~= nil and mt == (package.loaded["cmpxchg.semaphore"] or {}).metatable then
        return "semaphore"
    elseif mt ~= nil and mt == (package.loaded["cmpxchg.election"] or {}).metatable then
        return "election"
    end
    return nil
end

--- remove = cmpxchg.observe(fn): fn(event, info) is told what locks,
-- permits and elections do (observe.lua); remove() unregisters it.
function cmpxchg.observe(fn)
    check.type(fn, "function", 1, "observe")
    return require("cmpxchg.observe").add(fn)
end

--- job = cmpxchg.leader_job(name, opts, fn): inside nginx, fn runs every
-- opts.every seconds on whichever worker of the cluster leads (leader_job.lua).
function cmpxchg.leader_job(name, opts, fn)
    return require("cmpxchg.leader_job").start(name, opts, fn)
end

--- monitor = cmpxchg.monitor(store [, opts]): the seed's RavenDbProcessMonitor
cmpxchg.monitor = monitor.new

--- The operator view: the locks under a prefix, and breaking a stale one by
-- CAS on the index that was shown (bin/cmpxchg is their command line).
cmpxchg.locks = admin.locks
cmpxchg.break_lock = admin.break_lock

return cmpxchg
