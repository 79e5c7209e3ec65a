--- Distributed locks on compare-exchange, and the seed's process monitor.
-- Written once against the backend interface: nothing here knows about
-- SQLite or HTTP.
--
-- The lock value is the object the C# samples use ({"ExpiresAt": "<UTC with
-- 7 fractional digits>Z"}, plus who holds it), so C# clients that run the
-- seed's RavenDbProcessMonitor or the docs' SharedResource contend with us on
-- the same keys. Acquire = put with index 0; when that fails the value we get
-- back tells when the current lease ends, and an expired lease is taken over
-- by a put with the index we were shown, exactly as the seeds do.
local check = require "cmpxchg.check"
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"
local runtime = require "cmpxchg.runtime"
local store = require "cmpxchg.store"

local argerror = check.argerror
local backend_of = store.backend_of

local DEFAULTS = {
    ttl = 30,                   -- seconds a lease lasts
    timeout = 5,                -- seconds to wait for the lock (0: try once)
    expires_field = "ExpiresAt",
    backoff_min = 0.005,        -- first wait between attempts
    backoff_max = 0.1,          -- longest wait between attempts
    clock_skew = 0,             -- margin against clocks that disagree
    expires_grace = 60,         -- @expires is the lease end plus this
}

local Lock = {}
local lock_mt = { __name = "cmpxchg.Lock", __index = Lock }

local lock = { metatable = lock_mt, DEFAULTS = DEFAULTS }

local function options(opts, n, fname)
    if opts ~= nil then check.type(opts, "table", n, fname) end
    opts = opts or {}
    local o = {}
    for k, v in pairs(DEFAULTS) do
        if opts[k] ~= nil then o[k] = opts[k] else o[k] = v end
    end
    check.seconds(o.ttl, "ttl", n, fname)
    if o.ttl <= 0 then argerror(n, fname, "ttl must be positive") end
    check.seconds(o.timeout, "timeout", n, fname, true)
    check.seconds(o.backoff_min, "backoff_min", n, fname)
    check.seconds(o.backoff_max, "backoff_max", n, fname)
    check.seconds(o.clock_skew, "clock_skew", n, fname)
    check.seconds(o.expires_grace, "expires_grace", n, fname)
    if o.backoff_max < o.backoff_min then
        argerror(n, fname, "backoff_max must not be less than backoff_min")
    end
    if o.clock_skew >= o.ttl then
        argerror(n, fname, "clock_skew must be less than ttl")
    end
    if type(o.expires_field) ~= "string" or o.expires_field == "" then
        argerror(n, fname, "expires_field must be a non-empty string")
    end
    o.owner = opts.owner
    if o.owner ~= nil and type(o.owner) ~= "string" then
        argerror(n, fname, "owner must be a string")
    end
    o.on_lost = opts.on_lost
    if o.on_lost ~= nil and type(o.on_lost) ~= "function" then
        argerror(n, fname, "on_lost must be a function")
    end
    o.auto_renew = opts.auto_renew
    if o.auto_renew ~= nil and type(o.auto_renew) ~= "boolean" then
        argerror(n, fname, "auto_renew must be a boolean")
    end
    return o
end

--- The value written for a lease that ends at wall-clock time `ends`.
local function lease_value(o, owner, ends)
    return {
        [o.expires_field] = core.format_time(ends),
        Owner = owner,
        Host = runtime.hostname,
        Pid = runtime.pid,
    }
end

--- When the lease in `value` ends (epoch seconds), or nil when it names none.
local function lease_end(value, field)
    if type(value) ~= "table" then return nil end
    local at = value[field]
    if type(at) ~= "string" then return nil end
    return core.parse_time(at)
end

local function describe_holder(value, field)
    if type(value) ~= "table" then return "a value that is not a lock" end
    local who = type(value.Owner) == "string" and value.Owner or "an unknown owner"
    if type(value.Host) == "string" then who = who .. "@" .. value.Host end
    if type(value.Pid) == "number" then
        who = ("%s (pid %d)"):format(who, value.Pid)    -- cjson decodes 42 as 42.0
    end
    local at = value[field]
    return who .. " until " .. (type(at) == "string" and at or "an unknown time")
end

--- Writes a new lease with `index` (0: create). Returns the put's results
-- and the monotonic and wall times taken *before* the request was sent: the
-- lease is counted from then, so it is never thought longer than it is.
--
-- A write whose outcome is unknown (a timeout or a dropped connection, after
-- the backend's own retries with the same raft-request-id or the identical
-- txn) is settled by reading the key back: the lease is ours exactly when the
-- value there carries our owner id and the expiry we just wrote.
local AMBIGUOUS = { timeout = true, connect = true }

local function write_lease(st, key, o, owner, index)
    local mono, wall = runtime.monotime(), runtime.time()
    local ends = wall + o.ttl
    local value = lease_value(o, owner, ends)
    local ok, idx, current = st:put(key, value, index, { expires = ends + o.expires_grace })
    if ok == nil and AMBIGUOUS[current] then
        local now_value, now_index = st:get(key)
        if type(now_index) == "number" then         -- the read worked: settled
            if type(now_value) == "table" and now_value.Owner == owner and
                    now_value[o.expires_field] == value[o.expires_field] then
                return true, now_index, nil, mono, wall
            end
            -- not applied: the caller may try again, and tells why if it gives up
            return false, now_index, now_value, mono, wall, idx, current
        end
    end
    return ok, idx, current, mono, wall
end

--[[ Auto-renew, in plain Lua: a thread of the C core (csrc/renew.c) writes
the lease again every ttl/3 over its own connection, from a plan the backend
makes; the lock reads what the thread publishes at every call into it (or
into its store), and a loss becomes `on_lost` there, in Lua. ]]

local EXPIRY = json.mark("expiry")

--- The lease value as a template: its JSON text with a date slot for the
-- expiry (0: the date "now + ttl" at each renewal).
local function value_parts(o, owner)
    local value = lease_value(o, owner, 0)
    value[o.expires_field] = EXPIRY
    return json.template(assert(json.encode(value)), { [EXPIRY] = { 0 } })
end

local function renewal_plan(st, key, o, owner)
    local backend = st.backend
    return backend.renewal_plan and backend:renewal_plan(key, value_parts(o, owner),
        o.expires_grace)
end

function Lock:start_renewing()
    local o = self.options
    local st = self.store
    st.renewing = st.renewing or setmetatable({}, { __mode = "k" })
    if runtime.nginx then
        -- inside nginx: an ngx.timer chain (timer_renewer.lua), never a thread;
        -- it writes through a second face of the backend that has no locks to
        -- sync, so no on_lost hook ever runs inside the timer
        local quiet = store.new(st.backend)
        local key, owner = self.key, self.owner
        self.renewer = require("cmpxchg.timer_renewer").start({
            renew = function(index)
                if st.backend == nil then return nil, "closed: the store was closed" end
                return write_lease(quiet, key, o, owner, index)
            end,
            index = self.index, valid_mono = self.valid_mono, options = o, anchor = self,
        })
        st.renewing[self] = true
        return
    end
    local plan = assert(renewal_plan(self.store, self.key, o, self.owner))
    plan.index, plan.ttl, plan.clock_skew = self.index, o.ttl, o.clock_skew
    plan.interval, plan.valid_mono = o.ttl / 3, self.valid_mono
    self.renewer = core.renewer_start(plan)
    st.renewing[self] = true
end

local function drop_renewer(self)
    self.renewer = nil
    if self.store.renewing then self.store.renewing[self] = nil end
end

--- Reads what the renewal thread published; a lease it found lost ends the
-- lock here (and calls on_lost).
function Lock:sync()
    local r = self.renewer
    if r == nil or self.released then return end
    local index, valid, lost, reason = r:state()
    self.index, self.valid_mono = index, valid
    self.valid_wall = runtime.time() + (valid - runtime.monotime())
    if lost then
        drop_renewer(self)
        r:stop()                -- the thread has ended: this only reaps it
        self:mark({ false, "lost" }, reason)
    end
end

--- Stops the renewal thread, waiting for it, and takes over its final state.
function Lock:stop_renewing()
    local r = self.renewer
    if r == nil then return end
    r:stop()
    self:sync()
    drop_renewer(self)
end

local function new_lock(st, key, o, owner, idx, mono, wall, stats)
    return setmetatable({
        store = st, key = key, owner = owner, options = o,
        index = idx,
        valid_mono = mono + o.ttl - o.clock_skew,
        valid_wall = wall + o.ttl - o.clock_skew,
        attempts = stats.attempts, writes = stats.writes, waited = stats.waited,
        takeovers = stats.takeovers,
        on_lost = o.on_lost,
    }, lock_mt)
end

--- A failure worth waiting out within the lock's timeout: the store could
-- not be reached or did not answer (a leader election, a node restarting).
-- Wrong credentials, TLS, a missing database or a bad reply are final.
local function transient(code, o, deadline)
    return AMBIGUOUS[code] and o.timeout > 0 and runtime.monotime() < deadline
end

--- lock, err, code = store:lock(key [, opts])
function lock.acquire(st, key, opts)
    backend_of(st, "lock")
    check.key(key, 1, "lock")
    local o = options(opts, 2, "lock")
    local owner = o.owner or runtime.uuid()
    if o.timeout > 0 then runtime.check_yield("store:lock with a timeout") end
    if o.auto_renew and not runtime.nginx and not renewal_plan(st, key, o, owner) then
        argerror(2, "lock", "auto_renew is not available on this store ("
            .. st.backend:describe() .. ")")
    end
    local start = runtime.monotime()
    local deadline = start + o.timeout
    local step = o.backoff_min
    local stats = { attempts = 0, writes = 0, waited = 0, takeovers = 0 }
    local index = 0             -- 0: create; else the expired lease's index
    local probe = false         -- after a wait: read first, write only when it can win
    while true do
        local idx, current, failure, failure_code
        stats.attempts = stats.attempts + 1
        if probe then
            -- waiting costs reads, not writes: on RavenDB a failed put still
            -- takes a Raft index, on etcd a revision check
            local value, now_index, code = st:get(key)
            if type(now_index) == "number" then
                idx, current = now_index, value
            elseif transient(code, o, deadline) then
                failure, failure_code, idx = now_index, code, -1
            else
                return nil, now_index, code
            end
        else
            stats.writes = stats.writes + 1
            local ok, mono, wall
            ok, idx, current, mono, wall, failure, failure_code =
                write_lease(st, key, o, owner, index)
            if ok == nil then
                if not transient(current, o, deadline) then return nil, idx, current end
                failure, failure_code, idx = idx, current, -1     -- wait, then write again
            elseif ok then
                if index ~= 0 then stats.takeovers = stats.takeovers + 1 end
                stats.waited = mono - start
                local l = new_lock(st, key, o, owner, idx, mono, wall, stats)
                if o.auto_renew then l:start_renewing() end
                return l
            end
        end
        -- lost the race (or read the lease): idx/current are the lease now in
        -- the store. Write at once when it has expired (take it over) or is
        -- gone, but never loop without waiting past the deadline.
        local ends = lease_end(current, o.expires_field)
        local now = runtime.time()
        -- after an error, always back off: a store in trouble is not hammered
        local at_once = failure == nil and (runtime.monotime() < deadline or stats.attempts < 3)
        probe = false
        if idx > 0 and ends and now > ends + o.clock_skew and at_once then
            index = idx
        elseif idx == 0 and at_once then
            index = 0
        else
            index = 0
            local left = deadline - runtime.monotime()
            if o.timeout == 0 or left <= 0 then
                stats.waited = runtime.monotime() - start
                if failure then return nil, failure, failure_code, stats end
                return nil, ("timeout: lock '%s' is held by %s (%d %s in %.3f s)")
                    :format(key, idx > 0 and describe_holder(current, o.expires_field)
                        or "nobody now", stats.attempts,
                        stats.attempts == 1 and "attempt" or "attempts", stats.waited),
                    "timeout", stats
            end
            -- full jitter within [backoff_min, step], never past the deadline,
            -- and no later than just after the current lease ends
            local pause
            pause, step = store.backoff(step, o.backoff_min, o.backoff_max)
            if ends then
                pause = math.min(pause, math.max(ends + o.clock_skew - now, 0) + 0.001)
            end
            runtime.sleep(math.min(pause, left))
            probe = failure == nil      -- after an error, write again rather than read
        end
    end
end

local function to_lock(self, fname)
    if getmetatable(self) ~= lock_mt then
        argerror(1, fname, "cmpxchg.Lock expected, got " .. check.typename(self))
    end
    return self
end

--- Ends the lock with release `result`; when it was lost (`why`), calls the
-- on_lost hook once, from Lua, never from a finalizer or another thread.
function Lock:mark(result, why)
    self.released = result
    if why and self.on_lost then
        local hook = self.on_lost
        self.on_lost = nil
        hook(self, why)
    end
end

--- lock:release() -> true | false, "lost" | nil, err, code. Idempotent: a
-- second call returns what the first did.
function Lock:release()
    to_lock(self, "release")
    self:stop_renewing()
    local result = self.released
    if result then return result[1], result[2], result[3] end
    if self.store.backend == nil then
        self.released = { nil, "closed: the store was closed before the lock was released",
                          "closed" }
    else
        local ok, idx, code = self.store:delete(self.key, self.index)
        if ok == nil and AMBIGUOUS[code] then
            -- unknown outcome: gone means deleted (by us, or it expired); another
            -- index means it is someone else's now; ours still means not applied
            local _, now_index = self.store:get(self.key)
            if now_index == 0 then
                ok = true
            elseif type(now_index) == "number" and now_index ~= self.index then
                ok = false
            end
        end
        if ok == nil then return nil, idx, code end     -- still held: may retry
        self:mark(ok and { true } or { false, "lost" }, not ok and
            ("lost: lock '%s' was taken over before its release"):format(self.key) or nil)
    end
    result = self.released
    return result[1], result[2], result[3]
end

--- lock:extend([ttl]) -> true | nil, err, code. Renews the lease by a put on
-- the held index; the token changes to the new index.
function Lock:extend(ttl)
    to_lock(self, "extend")
    local renewing = self.renewer ~= nil
    self:stop_renewing()
    local released = self.released
    if released and released[2] == "lost" then
        return nil, ("lost: lock '%s' was taken over"):format(self.key), "lost"
    elseif released then
        check.raise("attempt to extend a released lock")
    end
    local o = self.options
    if ttl ~= nil then
        check.seconds(ttl, "ttl", 1, "extend")
        if ttl <= 0 or ttl <= o.clock_skew then argerror(1, "extend", "ttl too short") end
        o.ttl = ttl
    end
    backend_of(self.store, "extend")
    local ok, idx, current, mono, wall = write_lease(self.store, self.key, o, self.owner,
        self.index)
    if ok == nil then return nil, idx, current end
    if not ok then
        local why = ("lost: lock '%s' is now held by %s"):format(self.key,
            idx > 0 and describe_holder(current, o.expires_field) or "nobody")
        self:mark({ false, "lost" }, why)
        return nil, why, "lost"
    end
    self.index = idx
    self.valid_mono = mono + o.ttl - o.clock_skew
    self.valid_wall = wall + o.ttl - o.clock_skew
    if renewing then self:start_renewing() end
    return true
end

--- lock:token() -> the index of the held lease: a fencing token that strictly
-- increases with every acquisition (and extension) of the key.
function Lock:token()
    to_lock(self, "token"):sync()
    return self.index
end

--- lock:is_held() -> true while not released and the lease, counted on the
-- monotonic clock from before the request was sent, has not run out.
function Lock:is_held()
    to_lock(self, "is_held"):sync()
    return not self.released and runtime.monotime() < self.valid_mono
end

--- lock:valid_until() -> epoch seconds at which the lease ends.
function Lock:valid_until()
    to_lock(self, "valid_until"):sync()
    return self.valid_wall
end

-- `local l <close> = store:lock(k)` releases at the end of the scope. A
-- failure there cannot be reported; the lease then simply expires.
lock_mt.__close = function(self) pcall(Lock.release, self) end

lock_mt.__tostring = function(self)
    local state = self.released and "released" or "held"
    return ("cmpxchg.Lock (%s, token %s, %s)"):format(self.key, tostring(self.index), state)
end

local unpack = table.unpack or unpack     -- luacheck: ignore 143

local function pack(...)
    return { n = select("#", ...), ... }
end

--- ok, ... = store:with_lock(key, opts, fn, ...): runs fn(...) holding the
-- lock and releases it, also when fn raises (the error is re-raised as is).
-- Returns true and fn's results, or nil, err, code when the lock could not be
-- taken or was found lost at release.
function lock.with_lock(st, key, opts, fn, ...)
    backend_of(st, "with_lock")
    check.type(fn, "function", 3, "with_lock")
    local l, err, code = lock.acquire(st, key, opts)
    if not l then return nil, err, code end
    local results = pack(pcall(fn, ...))
    local ok, rerr, rcode = l:release()
    if not results[1] then error(results[2], 0) end
    if ok == false then
        return nil, ("lost: lock '%s' was taken over while held"):format(key), "lost"
    elseif ok == nil then
        return nil, rerr, rcode
    end
    return true, unpack(results, 2, results.n)
end

--[[ The seed's RavenDbProcessMonitor: enter waits until the lock is acquired
(5-minute lease), exit deletes by the index enter returned, lock gives a lock
object for `<close>`. ]]

local Monitor = {}
local monitor_mt = { __name = "cmpxchg.Monitor", __index = Monitor }

function lock.monitor(st, opts)
    backend_of(st, "monitor")
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    if o.ttl == nil then o.ttl = 300 end
    if o.timeout == nil then o.timeout = math.huge end
    options(o, 2, "monitor")    -- check now, not at the first enter
    return setmetatable({ store = st, options = o }, monitor_mt)
end

--- monitor:enter(key) -> index (the fencing token) | nil, err, code
function Monitor:enter(key)
    local l, err, code = lock.acquire(self.store, key, self.options)
    if not l then return nil, err, code end
    return l:token()
end

--- monitor:exit(key, index) -> true | false, "lost" | nil, err, code
function Monitor:exit(key, index)
    local ok, idx, code = self.store:delete(key, index)
    if ok == nil then return nil, idx, code end
    if ok then return true end
    return false, "lost"
end

--- monitor:lock(key) -> lock | nil, err, code
function Monitor:lock(key)
    return lock.acquire(self.store, key, self.options)
end

return lock
