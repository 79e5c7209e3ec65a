--- The coalescing cases of the test nginx (locations /coal/*, driven by
-- spec/integration/nginx_coalesce_spec.lua). The requests a waiter sends to
-- the server are counted here, through a wrapped cosocket transport (every
-- request and stream of this worker's transports), from the moment the
-- waiter first waits (a wrapped Waiter:change) until its lock is taken.
-- Counters live in the shared dict under the test's tag, so that /coal/state
-- answers on either worker; the waiting requests themselves insist on one
-- worker (`worker`, a pid): the others answer {"landed": "wrong"} at once,
-- and the spec sends more until enough landed.
local cjson = require "cjson"
local cmpxchg = require "cmpxchg"
local transport = require "cmpxchg.transport.ngx"
local wait = require "cmpxchg.wait"

local M = {}

local dict = ngx.shared.test

-- the counted coroutines (each a waiting request): coroutine -> {tag, id, waiting}
local tracked = setmetatable({}, { __mode = "k" })

local function now()
    ngx.update_time()
    return ngx.now()
end

--- A request of a tracked waiter that waits now: counted, with who sent it.
local function count()
    local t = tracked[coroutine.running()]
    if t and t.waiting then
        dict:incr(t.tag .. ":sent", 1, 0)
        dict:incr(t.tag .. ":sent:" .. t.id, 1, 0)
        dict:set(t.tag .. ":poller", t.id)
    end
end

do
    local Http = getmetatable(transport.new()).__index
    for _, name in ipairs({ "request", "stream" }) do
        local f = Http[name]
        Http[name] = function(...)
            count()
            return f(...)
        end
    end
    local Waiter = getmetatable(wait.new({}, "k", "lock", {}, "o")).__index
    local change = Waiter.change
    Waiter.change = function(self, ...)
        local t = tracked[coroutine.running()]
        if t and not t.waiting then
            t.waiting = true
            local n = dict:incr(t.tag .. ":waiting", 1, 0)
            if n == 1 then dict:set(t.tag .. ":t_first", now()) end
            if n == t.n then dict:set(t.tag .. ":t_all", now()) end
        end
        return change(self, ...)
    end
end

local stores = {}               -- per worker: one store per target, database and options

local function store_of(a)
    local id = table.concat({ a.target, a.db or "", a.coalesce or "", a.watch or "" }, "#")
    local st = stores[id]
    if st == nil or cmpxchg.type(st) ~= "store" then
        local target = a.target
        if target:find(",", 1, true) then
            local list = {}
            for url in target:gmatch("[^,]+") do list[#list + 1] = url end
            target = list
        end
        local opts = { database = a.db ~= "" and a.db or nil, coalesce = a.coalesce ~= "false" }
        if a.watch == "false" then opts.watch = false end
        local err, code
        st, err, code = cmpxchg.open(target, opts)
        if not st then error(("open %s: %s (%s)"):format(a.target, err, code)) end
        stores[id] = st
    end
    return st
end

local function line(t)
    ngx.say(cjson.encode(t))
    ngx.flush(true)
end

--- Whether the request may go on here: on the worker it names (else it is
-- answered "wrong" at once) and among the first `n` of its tag ("full").
local function landed(a, admit)
    if tonumber(a.worker) and tonumber(a.worker) ~= ngx.worker.pid() then
        line({ landed = "wrong" })
        return false
    end
    if admit and dict:incr(a.tag .. ":admitted", 1, 0) > tonumber(a.n) then
        line({ landed = "full" })
        return false
    end
    return true
end

local function lock_options(a)
    return { timeout = tonumber(a.timeout) or 60, ttl = tonumber(a.ttl) or 30,
             backoff_min = tonumber(a.bmin), backoff_max = tonumber(a.bmax) }
end

--- One waiter: lands, says so at once (the spec reads that line), takes the
-- lock, records who is inside the section (never two), and lets go.
function M.wait()
    local a = ngx.req.get_uri_args()
    if not landed(a, true) then return end
    line({ landed = "admitted", pid = ngx.worker.pid() })
    local tag = a.tag
    local st = store_of(a)
    local t = { tag = tag, id = a.id, n = tonumber(a.n) }
    tracked[coroutine.running()] = t
    local ok, l, err, code = pcall(st.lock, st, a.key, lock_options(a))
    tracked[coroutine.running()] = nil
    if not ok then
        dict:incr(tag .. ":failed", 1, 0)
        return line({ error = tostring(l) })
    end
    if not l then
        dict:incr(tag .. ":failed", 1, 0)
        return line({ error = err, code = code })
    end
    if dict:incr(tag .. ":inside", 1, 0) > 1 then dict:incr(tag .. ":overlaps", 1, 0) end
    dict:set(tag .. ":t_last", now())
    ngx.sleep(0.002)            -- in the section: another one in it now would be counted
    dict:incr(tag .. ":inside", -1, 0)
    dict:incr(tag .. ":acquired", 1, 0)
    local released, rerr = l:release()
    line({ acquired = true, id = a.id, token = l:token(), released = released, err = rerr })
end

--- The holder: takes the lock, says so, and keeps it until /coal/release
-- says (a minute at most); what the waiters had sent by then is noted.
function M.hold()
    local a = ngx.req.get_uri_args()
    if not landed(a) then return end
    local st = store_of(a)
    local l, err, code = st:lock(a.key, { timeout = 10, ttl = 60 })
    if not l then return line({ error = err, code = code }) end
    line({ landed = "held", pid = ngx.worker.pid(), token = l:token() })
    for _ = 1, 6000 do
        if dict:get(a.tag .. ":release") then break end
        ngx.sleep(0.01)
    end
    dict:set(a.tag .. ":sent_release", dict:get(a.tag .. ":sent") or 0)
    dict:set(a.tag .. ":t_release", now())
    local ok, rerr = l:release()
    line({ released = ok, err = rerr })
end

function M.release()
    dict:set(ngx.req.get_uri_args().tag .. ":release", true)
    line({ ok = true })
end

--- What the dict says of a tag; `ids` (comma-separated): each one's count.
function M.state()
    local a = ngx.req.get_uri_args()
    local tag = a.tag
    local r = { now = now() }
    for _, k in ipairs({ "admitted", "waiting", "sent", "t_first", "t_all", "t_release",
                         "sent_release", "poller", "acquired", "failed", "overlaps", "inside",
                         "t_last" }) do
        r[k] = dict:get(tag .. ":" .. k)
    end
    r.by = {}
    for id in (a.ids or ""):gmatch("[^,]+") do r.by[id] = dict:get(tag .. ":sent:" .. id) or 0 end
    line(r)
end

--- The coalesce groups alive in this worker (after a full collection: they
-- are weakly held, and gone once no waiter references them).
function M.groups()
    local a = ngx.req.get_uri_args()
    if not landed(a) then return end
    collectgarbage()
    collectgarbage()
    line({ landed = "here", groups = require("cmpxchg.coalesce").count() })
end

return M
