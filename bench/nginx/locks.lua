--- The handlers of section 10 of the benchmark (bench/nginx/locks.conf):
-- cmpxchg inside nginx, driven over HTTP by bench/run.lua.
--   GET /wait?target=T&db=D&key=K&coalesce=0|1&watch=0|1&timeout=S
--       one request that waits for the lock K (taken by run.lua), takes it
--       and releases it at once: "ok" or 500 and why
--   GET /protected?impl=cmpxchg|dict&target=FILE&key=K&hold=S
--       a lock-protected endpoint: takes K (cmpxchg on the embedded store
--       FILE, or lua-resty-lock's shared-dict lock), reads a counter of the
--       shared dict, yields `hold` seconds, writes it back plus one, releases
--   GET /counters[?key=K][&reset=1]
--       "requests R waiting W done D count C last L" (both workers): R the
--       HTTP requests the stores of this nginx sent (each watch counts one), W
--       the /wait requests waiting now, D the protected sections done, C the
--       counter of K's sections, L the time of the last acquisition by a /wait
--       request (epoch seconds); reset=1 zeroes R, D and L
-- luacheck: std max+ngx_lua (nginx's globals: this file runs inside nginx only)
local cmpxchg = require "cmpxchg"

local locks = {}

local stores = {}       -- per worker: one store per target, database and options
local shared            -- ngx.shared.bench

--- Counts every request the stores of this worker send, in the shared dict:
-- the transport's factory is wrapped before any store is opened.
function locks.init_worker()
    shared = ngx.shared.bench
    local transport = require "cmpxchg.transport.ngx"
    local new = transport.new
    transport.new = function(...)
        local h = new(...)
        return setmetatable({}, { __index = function(_, name)
            local v = h[name]
            if type(v) ~= "function" then return v end
            if name == "request" or name == "stream" then
                return function(_, ...)
                    shared:incr("requests", 1, 0)
                    return v(h, ...)
                end
            end
            return function(_, ...) return v(h, ...) end
        end })
    end
end

--- The worker's store for `a` (target, db, coalesce, watch), opened on first use.
local function store_for(a)
    local id = table.concat({ a.target, a.db or "", a.coalesce or "", a.watch or "" }, "#")
    local st = stores[id]
    if st then return st end
    local opts = { database = a.db, timeout = 30 }
    if a.watch == "0" then opts.watch = false end
    if a.coalesce == "0" then opts.coalesce = false end
    local err, code
    st, err, code = cmpxchg.open(a.target, opts)
    if not st then error(("open %s: %s (%s)"):format(a.target, err, code)) end
    stores[id] = st
    return st
end

local function fail(msg)
    ngx.status = 500
    ngx.say(tostring(msg))
end

function locks.counters()
    local a = ngx.req.get_uri_args()
    if a.reset == "1" then
        shared:set("requests", 0)
        shared:set("done", 0)
        shared:set("last:0", 0)
        shared:set("last:1", 0)
    end
    local last = math.max(shared:get("last:0") or 0, shared:get("last:1") or 0)
    ngx.say(("requests %d waiting %d done %d count %d last %.3f"):format(
        shared:get("requests") or 0, shared:get("waiting") or 0, shared:get("done") or 0,
        a.key and shared:get("count:" .. a.key) or 0, last))
end

function locks.wait()
    local a = ngx.req.get_uri_args()
    local ok, err = pcall(function()
        local st = store_for(a)
        shared:incr("waiting", 1, 0)
        local l, lerr, code = st:lock(a.key, { ttl = 10, timeout = tonumber(a.timeout) or 60 })
        shared:incr("waiting", -1, 0)
        if not l then error(("lock: %s (%s)"):format(lerr, code)) end
        ngx.update_time()
        local mine = "last:" .. ngx.worker.id()
        shared:set(mine, math.max(shared:get(mine) or 0, ngx.now()))
        assert(l:release())
    end)
    if not ok then return fail(err) end
    ngx.say("ok")
end

local dict_lock
do
    local ok, resty_lock = pcall(require, "resty.lock")
    dict_lock = ok and resty_lock or require "dict_lock"
    locks.dict_impl = ok and "lua-resty-lock" or "lua-resty-lock's mechanism"
end

function locks.protected()
    local a = ngx.req.get_uri_args()
    local hold = tonumber(a.hold) or 0.001
    local ok, err = pcall(function()
        local release
        if a.impl == "dict" then
            local lk = assert(dict_lock:new("bench_locks", { timeout = 60, exptime = 30 }))
            local waited, lerr = lk:lock(a.key)
            if not waited then error("lock: " .. tostring(lerr)) end
            release = function() assert(lk:unlock()) end
        else
            local st = store_for(a)
            local l, lerr, code = st:lock(a.key, { ttl = 10, timeout = 60 })
            if not l then error(("lock: %s (%s)"):format(lerr, code)) end
            release = function() assert(l:release()) end
        end
        -- a read-modify-write that a second holder would break: the count of
        -- sections must end equal to the number of requests answered "ok"
        local name = "count:" .. a.key
        local n = shared:get(name) or 0
        ngx.sleep(hold)
        shared:set(name, n + 1)
        shared:incr("done", 1, 0)
        release()
    end)
    if not ok then return fail(err) end
    ngx.say("ok")
end

return locks
