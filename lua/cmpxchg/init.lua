--- cmpxchg: RavenDB-style compare-exchange and distributed locks for Lua.
-- The public entry points: open, type, monitor, null, _VERSION.
local admin = require "cmpxchg.admin"
local check = require "cmpxchg.check"
local embedded = require "cmpxchg.embedded"
local etcd = require "cmpxchg.etcd"
local json = require "cmpxchg.json"
local lock = require "cmpxchg.lock"
local ravendb = require "cmpxchg.ravendb"
local runtime = require "cmpxchg.runtime"
local store = require "cmpxchg.store"
local target_of = require "cmpxchg.target"

local argerror = check.argerror

local cmpxchg = {
    _VERSION = "cmpxchg 0.1.0",
    null = json.null,           -- store JSON null with this
}

-- store methods that live in lock.lua
local Store = store.metatable.__index
function Store:lock(key, opts) return lock.acquire(self, key, opts) end
function Store:with_lock(key, opts, fn, ...) return lock.with_lock(self, key, opts, fn, ...) end

--- Where cmpxchg.open() keeps its file when neither a target nor
-- $CMPXCHG_URL is given: $XDG_STATE_HOME/cmpxchg/default.db, else
-- $HOME/.local/state/cmpxchg/default.db (the directory is created, mode 0700,
-- and checked, whichever way this path is given to open).
cmpxchg.default_path = target_of.default_path

local open_server           -- defined below

local OPTIONS = { database = "string", timeout = "number", sweep_interval = "number",
                  sync = "string", tls = "table", user = "string", password = "string" }

local function check_options(opts)
    if opts == nil then return {} end
    check.type(opts, "table", 2, "open")
    for k, v in pairs(opts) do
        local want = OPTIONS[k]
        if want == nil then
            argerror(2, "open", "unknown option '" .. tostring(k) .. "'")
        elseif type(v) ~= want then
            argerror(2, "open", ("option '%s' must be a %s, got %s"):format(k, want, type(v)))
        end
    end
    if opts.timeout ~= nil then check.seconds(opts.timeout, "timeout", 2, "open") end
    if opts.sync ~= nil and opts.sync ~= "normal" and opts.sync ~= "full" then
        argerror(2, "open", "option 'sync' must be \"normal\" or \"full\"")
    end
    if opts.sweep_interval ~= nil and opts.sweep_interval ~= opts.sweep_interval then
        argerror(2, "open", "option 'sweep_interval' is NaN")
    end
    return opts
end

local function check_tls(tls)
    if tls == nil then return end
    for k, v in pairs(tls) do
        if k == "verify" then
            if type(v) ~= "boolean" then argerror(2, "open", "tls.verify must be a boolean") end
        elseif k == "ca" or k == "cert" or k == "key" then
            if type(v) ~= "string" then argerror(2, "open", "tls." .. k .. " must be a path") end
        else
            argerror(2, "open", "unknown tls option '" .. tostring(k) .. "'")
        end
    end
end

--- The URLs of a server target (a URL or a table of them, one scheme for
-- all) and that scheme.
local function server_urls(target)
    local urls = type(target) == "table" and target or { target }
    if #urls == 0 then argerror(1, "open", "empty table of URLs") end
    local scheme
    for i, url in ipairs(urls) do
        local s = type(url) == "string" and url:match("^(%a+)://[^/]")
        s = s and s:lower()
        if not (s == "http" or s == "https" or s == "etcd" or s == "etcds") then
            argerror(1, "open", ("URL #%d is not an http(s):// or etcd(s):// URL: %s")
                :format(i, tostring(url)))
        elseif scheme and s ~= scheme then
            argerror(1, "open", "URLs of one store must all have the same scheme")
        end
        scheme = s
    end
    return urls, scheme
end

--- A RavenDB cluster or an etcd cluster, by the URLs' scheme.
open_server = function(target, opts)
    local urls, scheme = server_urls(target)
    check_tls(opts.tls)
    -- inside nginx: cosockets, never libcurl (it would block the worker)
    local transport = require(runtime.nginx and "cmpxchg.transport.ngx"
        or "cmpxchg.transport.curl")
    local backend, err, code
    if scheme == "etcd" or scheme == "etcds" then
        if opts.database and opts.database:find("[^%w%-%._/]") then
            argerror(2, "open", "the etcd key prefix (database) holds only letters, digits "
                .. "and '-', '_', '.', '/'")
        end
        if (opts.user == nil) ~= (opts.password == nil) then
            argerror(2, "open", "options 'user' and 'password' go together")
        end
        local endpoints = {}
        for i, url in ipairs(urls) do
            endpoints[i] = url:gsub("^%a+://", scheme == "etcds" and "https://" or "http://")
        end
        backend, err, code = etcd.open(endpoints, opts, transport)
    else
        if type(opts.database) ~= "string" or opts.database == "" then
            argerror(2, "open", "option 'database' (the RavenDB database name) is required")
        elseif opts.database:find("[^%w%-%._]") then
            argerror(2, "open", "database names hold only letters, digits, '-', '_' and '.'")
        end
        backend, err, code = ravendb.open(urls, opts, transport)
    end
    if not backend then return nil, err, code end
    return store.new(backend)
end

--- store, err, code = cmpxchg.open([target] [, opts])
-- target: nil ($CMPXCHG_URL, else the default file), "http(s)://..." (RavenDB),
-- "etcd(s)://..." (etcd), a table of such URLs (a cluster), or a file path for
-- the embedded store (":memory:" too); host:port without a scheme raises
-- (lua/cmpxchg/target.lua says which strings are files).
function cmpxchg.open(target, opts)
    opts = check_options(opts)
    if target == nil then
        target = os.getenv("CMPXCHG_URL")
        if target == "" then target = nil end
        if target and opts.database == nil and os.getenv("CMPXCHG_DATABASE") then
            opts = setmetatable({ database = os.getenv("CMPXCHG_DATABASE") }, { __index = opts })
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
    if kind == "server" then return open_server(target, opts) end
    if kind == "file" then
        local ok, err, code = target_of.prepare(target, true)
        if not ok then return nil, err, code end
    end
    local backend, err, code = embedded.open(target, opts)
    if not backend then return nil, target_of.explain(target, err, code), code end
    return store.new(backend)
end

--- cmpxchg.type(x) -> "store", "closed store", "lock", "released lock" or nil
function cmpxchg.type(x)
    local mt = getmetatable(x)
    if mt == store.metatable then
        return x.backend and "store" or "closed store"
    elseif mt == lock.metatable then
        return x.released and "released lock" or "lock"
    end
    return nil
end

--- monitor = cmpxchg.monitor(store [, opts]): the seed's RavenDbProcessMonitor
cmpxchg.monitor = lock.monitor

--- The operator view: the locks under a prefix, and breaking a stale one by
-- CAS on the index that was shown (bin/cmpxchg is their command line).
cmpxchg.locks = admin.locks
cmpxchg.break_lock = admin.break_lock

return cmpxchg
