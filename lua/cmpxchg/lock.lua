--- Distributed locks on compare-exchange: acquire, release, extend, the
-- fencing token. Written once against the backend interface (store.lua):
-- nothing here knows about SQLite or HTTP. The lease value and its write are
-- lease.lua's; auto-renew is renewal.lua's.
--
-- Acquire = put with index 0; when that fails the value we get back tells
-- when the current lease ends, and an expired lease is taken over by a put
-- with the index we were shown, exactly as the seeds do.
local check = require "cmpxchg.check"
local handoff = require "cmpxchg.handoff"
local lease = require "cmpxchg.lease"
local observe = require "cmpxchg.observe"
local renewal = require "cmpxchg.renewal"
local runtime = require "cmpxchg.runtime"
local store = require "cmpxchg.store"
local wait = require "cmpxchg.wait"

local argerror = check.argerror
local AMBIGUOUS = lease.AMBIGUOUS
local extend_settled

local DEFAULTS = {
    ttl = 30,                   -- seconds a lease lasts
    timeout = 5,                -- seconds to wait for the lock (0: try once)
    expires_field = "ExpiresAt",
    backoff_min = 0.005,        -- first wait between attempts
    backoff_max = 0.1,          -- longest wait between attempts
    clock_skew = 0,             -- margin against clocks that disagree
    expires_grace = 60,         -- @expires is the lease end plus this
    waiter_ttl = 5,             -- fair: seconds a waiter's queue entry outlives its last renewal
}

-- the longest lease (and grace): its end must stay a date C# can write
local MAX_LEASE = 1e10          -- seconds, about 317 years
-- the longest wait between attempts and the largest skew
local MAX_PAUSE = 86400

local Lock = {}
local lock_mt = { __name = "cmpxchg.Lock", __index = Lock }

local lock = { metatable = lock_mt, DEFAULTS = DEFAULTS }

local OPTIONS = { owner = "string", on_lost = "function", auto_renew = "boolean",
                  fair = "boolean" }

local function options(opts, n, fname)
    if opts ~= nil then check.type(opts, "table", n, fname) end
    opts = opts or {}
    for k, v in pairs(opts) do
        local want = OPTIONS[k]
        if want == nil and DEFAULTS[k] == nil then
            argerror(n, fname, "unknown option '" .. tostring(k) .. "'")
        elseif want and type(v) ~= want then
            argerror(n, fname, ("%s must be a %s"):format(k, want))
        end
    end
    local o = {}
    for k, v in pairs(DEFAULTS) do
        if opts[k] ~= nil then o[k] = opts[k] else o[k] = v end
    end
    check.seconds(o.ttl, "ttl", n, fname)
    if o.ttl <= 0 then argerror(n, fname, "ttl must be positive") end
    check.seconds(o.timeout, "timeout", n, fname, true)
    for _, name in ipairs({ "backoff_min", "backoff_max", "clock_skew" }) do
        check.seconds(o[name], name, n, fname)
        if o[name] > MAX_PAUSE then
            argerror(n, fname, ("%s must be at most %d seconds"):format(name, MAX_PAUSE))
        end
    end
    check.seconds(o.expires_grace, "expires_grace", n, fname)
    if o.ttl > MAX_LEASE or o.expires_grace > MAX_LEASE then
        argerror(n, fname, ("ttl and expires_grace must be at most %.0f seconds"):format(MAX_LEASE))
    end
    if o.backoff_max < o.backoff_min then
        argerror(n, fname, "backoff_max must not be less than backoff_min")
    end
    if o.clock_skew >= o.ttl then
        argerror(n, fname, "clock_skew must be less than ttl")
    end
    if type(o.expires_field) ~= "string" or o.expires_field == "" then
        argerror(n, fname, "expires_field must be a non-empty string")
    end
    check.seconds(o.waiter_ttl, "waiter_ttl", n, fname)
    if o.waiter_ttl <= o.clock_skew or o.waiter_ttl > MAX_PAUSE then
        argerror(n, fname, ("waiter_ttl must be more than clock_skew and at most %d seconds")
            :format(MAX_PAUSE))
    end
    o.owner, o.on_lost, o.auto_renew = opts.owner, opts.on_lost, opts.auto_renew
    o.fair = opts.fair
    return o
end
lock.options = options

--- Ends the lock with release `result`; when it was lost (`why`), calls the
-- on_lost hook once, from Lua, never from a finalizer or another thread.
local function finish(self, result, why)
    self.released = result
    if why and observe.active then
        observe.emit("lost", { key = self.key, kind = self.kind or "lock", reason = why })
    end
    if why and self.on_lost then
        local hook = self.on_lost
        self.on_lost = nil
        hook(self, why)
    end
end

--- What a renewer learned, handed over by renewal.lua.
local function apply_renewal(self, index, valid, lost, reason)
    if self.released then return end
    self.index, self.valid_mono = index, valid
    self.valid_wall = runtime.time() + (valid - runtime.monotime())
    if lost then finish(self, { false, "lost" }, reason) end
end

local function new_lock(st, key, o, owner, w, stats)
    return setmetatable({
        store = st, key = key, owner = owner, options = o,
        index = w.index,
        valid_mono = w.mono + o.ttl - o.clock_skew,
        valid_wall = w.wall + o.ttl - o.clock_skew,
        attempts = stats.attempts, writes = stats.writes, waited = stats.waited,
        takeovers = stats.takeovers,
        on_lost = o.on_lost,
        acquired_mono = runtime.monotime(),
    }, lock_mt)
end

--- A failure worth waiting out within the lock's timeout: the store could
-- not be reached or did not answer (a leader election, a node restarting).
-- Wrong credentials, TLS, a missing database or a bad reply are final.
local function transient(code, o, deadline)
    return AMBIGUOUS[code] and o.timeout > 0 and runtime.monotime() < deadline
end

--- lock, err, code [, stats] = lock.take(st, key [, opts]): store:lock
-- without fair waiting and without telling the observers: the recipes built
-- on locks (fair waiting, semaphores, elections) take locks through it and
-- report what they did themselves.
local function take(st, key, opts)
    local backend = store.enter(st, "lock")
    check.key(key, 1, "lock")
    local o = options(opts, 2, "lock")
    local owner = o.owner or runtime.uuid()
    if o.timeout > 0 then runtime.check_yield("store:lock with a timeout") end
    if o.auto_renew then
        local ok, why = renewal.available(st)
        if not ok then argerror(2, "lock", "auto_renew is not available: " .. why) end
    end
    local start = runtime.monotime()
    local deadline = start + o.timeout
    local step = o.backoff_min
    local stats = { attempts = 0, writes = 0, waited = 0, takeovers = 0 }
    local index = 0             -- 0: create; else the expired lease's index
    local expired               -- (with index > 0) the expired lease's value
    local probe = false         -- after a wait: read first, write only when it can win
    local again                 -- a write whose outcome is unknown: sent again as it was
    local waiter                -- what it waits through (wait.lua), from its first wait on
    -- the lock as held from the write `w` (lease.write's, or handoff.taken's)
    local function held(w)
        local l = new_lock(st, key, o, owner, w, stats)
        l.contended = stats.contended
        -- a holder whose lease we took over is dead or paused: its queue entry,
        -- if it has one, is not passed the lock again (handoff.lua)
        l.took_from = stats.took_from
        if waiter then waiter:close(l) end
        if o.auto_renew then renewal.start(l, apply_renewal) end
        return l
    end
    -- the lock at `idx`, `value` when a release passed it to our queue entry
    -- (handoff.lua) and its lease still runs; else nil (a lease that ran out
    -- while we were not looking is taken over as any other)
    local function passed(idx, value, q)
        q = q or waiter and waiter.chain
        local w = q and idx > 0 and handoff.taken(idx, value, q, o)
        if not w or runtime.monotime() >= w.mono + o.ttl - o.clock_skew then return nil end
        stats.waited, stats.contended = math.max(0, w.mono - start), true
        return held(w)
    end
    local function over(...)
        local q = waiter and waiter.chain
        if waiter then waiter:close() end
        waiter = nil
        if q and q.handoff then
            -- it left the queue, so no release passes it the lock from now on;
            -- one may have just before: then the lock is ours after all
            local now_index, value = backend:get(key)
            local l = type(now_index) == "number" and passed(now_index, value, q)
            if l then return l end
        end
        return ...
    end
    while true do
        local idx, current, failure, failure_code
        stats.attempts = stats.attempts + 1
        if probe then
            -- waiting costs reads, not writes: on RavenDB a failed put still
            -- takes a Raft index, on etcd a revision check
            local now_index, value, code = backend:get(key)
            if now_index ~= nil then
                idx, current = now_index, value
            elseif transient(code, o, deadline) then
                failure, failure_code, idx = value, code, -1
            else
                return over(nil, value, code)
            end
        else
            stats.writes = stats.writes + 1
            local w = lease.write(backend, key, o, owner, index, again)
            again = w.again
            if w.ok and runtime.monotime() >= w.mono + o.ttl - o.clock_skew then
                -- written, but settled only after its lease had run out (an answer
                -- that waited out a cluster without a leader): an expired lease of
                -- ours, taken over below like any other, never handed out as held
                idx, current = w.index, w.value
            elseif w.ok then
                if index ~= 0 then
                    stats.takeovers = stats.takeovers + 1
                    stats.took_from = type(expired) == "table" and expired.Owner or nil
                end
                stats.waited = w.mono - start
                return held(w)
            elseif w.ok == nil then
                if not transient(w.code, o, deadline) then return over(nil, w.err, w.code) end
                failure, failure_code, idx = w.err, w.code, -1     -- wait, then write again
            else
                idx, current = w.index, w.current
                if w.unapplied then failure, failure_code = w.err, w.code end
            end
        end
        -- lost the race (or read the lease): idx/current are the lease now in
        -- the store, which a release may have passed to us. Write at once when
        -- it has expired (take it over) or is gone, but never loop without
        -- waiting past the deadline.
        local l = passed(idx, current)
        if l then return l end
        local ends = lease.ends(current, o.expires_field)
        local now = runtime.time()
        if idx > 0 then stats.contended = true end     -- someone held it: a hand-off follows
        -- after an error, always back off: a store in trouble is not hammered
        local at_once = failure == nil and (runtime.monotime() < deadline or stats.attempts < 3)
        probe = false
        if idx > 0 and ends and now > ends + o.clock_skew and at_once then
            index, expired = idx, current
        elseif idx == 0 and at_once then
            index = 0
        else
            index = 0
            local left = deadline - runtime.monotime()
            if o.timeout == 0 or left <= 0 then
                stats.waited = runtime.monotime() - start
                if failure then return over(nil, failure, failure_code, stats) end
                return over(nil, ("timeout: lock '%s' is held by %s (%d %s in %.3f s)")
                    :format(key, idx > 0 and lease.describe_holder(current, o.expires_field)
                        or "nobody now", stats.attempts,
                        stats.attempts == 1 and "attempt" or "attempts", stats.waited),
                    "timeout", stats)
            end
            -- full jitter within [backoff_min, step], never past the deadline,
            -- and no later than just after the current lease ends
            local pause
            pause, step = store.backoff(step, o.backoff_min, o.backoff_max)
            if ends then
                pause = math.min(pause, math.max(ends + o.clock_skew - now, 0) + 0.001)
            end
            waiter = waiter or wait.new(st, key, "lock", o, owner)
            local _, seen = waiter:change(idx > 0 and idx or 0, math.min(pause, left), left,
                idx > 0 and ends or nil, idx > 0 and current or nil)
            l = seen and seen.value and passed(seen.index, seen.value)
            if l then return l end
            -- after an error, write again rather than read; a key known to be
            -- gone (a pushed release) is written at once too
            probe = failure == nil and not (seen and seen.index == 0)
        end
    end
end

lock.take = take

--- Tells the observers how an acquisition of `key` (a lock, a permit or a
-- leadership: `kind`) ended: `l` the lock, or err, code and the statistics.
function lock.report(kind, key, fair, l, err, code, stats)
    if l then
        l.kind = kind
        local info = { key = key, kind = kind, token = l.index, waited = l.waited,
                       attempts = l.attempts, writes = l.writes, takeover = l.takeovers > 0,
                       fair = fair == true }
        observe.emit("acquire", info)
        if l.contended then observe.emit("handoff", info) end
    elseif code then
        stats = stats or {}
        observe.emit("acquire_failed", { key = key, kind = kind, err = err, code = code,
            waited = stats.waited, attempts = stats.attempts, fair = fair == true })
    end
end

--- lock, err, code = store:lock(key [, opts])
function lock.acquire(st, key, opts)
    local l, err, code, stats
    local fair = type(opts) == "table" and opts.fair ~= nil and opts.fair ~= false
    if fair then        -- queue.lock checks that it is a boolean
        l, err, code, stats = require("cmpxchg.queue").lock(st, key, opts)
    else
        l, err, code, stats = take(st, key, opts)
    end
    -- its release passes it to a queued waiter (handoff.lua); the recipes'
    -- locks (permits, leaderships) have no such queue, and do not look
    if l then l.passes = true end
    if observe.active then lock.report("lock", key, fair, l, err, code, stats) end
    return l, err, code, stats
end

local function to_lock(self, fname)
    if getmetatable(self) ~= lock_mt then
        argerror(1, fname, "cmpxchg.Lock expected, got " .. check.typename(self))
    end
    return self
end

--- Settles an extend whose outcome stayed unknown (self.again) by sending
-- it again: its w when that was definite (the lock takes the new index and
-- lease when it was applied), nil while it stays unknown.
function extend_settled(self, backend)
    local w = lease.write(backend, self.key, self.options, self.owner, nil, self.again)
    if w.ok == nil then
        self.again, self.again_err, self.again_code = w.again, w.err, w.code
        return nil
    end
    self.again = nil
    if w.ok then
        self.index = w.index
        self.valid_mono = w.mono + self.options.ttl - self.options.clock_skew
        self.valid_wall = w.wall + self.options.ttl - self.options.clock_skew
    end
    return w
end

--- lock:release() -> true | false, "lost" | nil, err, code. Idempotent: a
-- second call returns what the first did.
function Lock:release()
    to_lock(self, "release")
    renewal.stop(self)
    local result = self.released
    if result then return result[1], result[2], result[3] end
    local backend = self.store.backend
    if backend == nil then
        self.released = { nil, "closed: the store was closed before the lock was released",
                          "closed" }
    else
        -- an extend whose outcome stayed unknown is settled first: the index
        -- it may have written is the one to delete
        if self.again and extend_settled(self, backend) == nil then
            return nil, self.again_err, self.again_code
        end
        local tried, ok, idx, code, id
        if self.passes and backend.can_watch and backend.pass and not self.release_id then
            -- a waiter queued behind us is passed the lock in the same commit
            tried, ok, idx, code = handoff.release(backend, self.key, self.index, self.wait_entry,
                self.took_from)
        end
        if not tried then
            ok, idx, code, id = lease.delete(backend, self.key, self.index, self.release_id)
            self.release_id = id    -- a retried release sends the same delete again
        end
        if ok == nil then return nil, idx, code end     -- still held: may retry
        finish(self, ok and { true } or { false, "lost" }, not ok and
            ("lost: lock '%s' was taken over before its release"):format(self.key) or nil)
        wait.released(self.store, self.key, self)
    end
    result = self.released
    if observe.active then
        observe.emit("release", { key = self.key, kind = self.kind or "lock", token = self.index,
            ok = result[1], code = result[3] or (result[1] == false and "lost" or nil),
            held = runtime.monotime() - self.acquired_mono })
    end
    return result[1], result[2], result[3]
end

--- lock:extend([ttl]) -> true | nil, err, code. Renews the lease by a put on
-- the held index; the token changes to the new index.
function Lock:extend(ttl)
    to_lock(self, "extend")
    local renewing = self.renewer ~= nil
    renewal.stop(self)
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
        if ttl > MAX_LEASE then
            argerror(1, "extend", ("ttl must be at most %.0f seconds"):format(MAX_LEASE))
        end
        o.ttl = ttl
    end
    local backend = store.enter(self.store, "extend")
    local w
    if self.again then      -- an earlier extend's outcome is unknown: that write again
        local settled = extend_settled(self, backend)
        if settled == nil then
            if renewing then renewal.start(self, apply_renewal) end
            return nil, self.again_err, self.again_code
        end
        w = settled
    end
    if w == nil or w.ok then
        w = lease.write(backend, self.key, o, self.owner, self.index)
    end
    if w.again then self.again, self.again_err, self.again_code = w.again, w.err, w.code end
    if w.ok == nil or (w.unapplied and w.index == self.index) then
        if renewing then renewal.start(self, apply_renewal) end    -- still ours
        return nil, w.err, w.code
    elseif not w.ok then
        local why = ("lost: lock '%s' is now held by %s"):format(self.key,
            w.index > 0 and lease.describe_holder(w.current, o.expires_field) or "nobody")
        finish(self, { false, "lost" }, why)
        return nil, why, "lost"
    end
    self.index = w.index
    self.valid_mono = w.mono + o.ttl - o.clock_skew
    self.valid_wall = w.wall + o.ttl - o.clock_skew
    if renewing then renewal.start(self, apply_renewal) end
    return true
end

--- lock:token() -> the index of the held lease: a fencing token that strictly
-- increases with every acquisition (and extension) of the key.
function Lock:token()
    renewal.sync(to_lock(self, "token"))
    return self.index
end

--- lock:is_held() -> true while not released and the lease, counted on the
-- monotonic clock from before the request was sent, has not run out.
function Lock:is_held()
    renewal.sync(to_lock(self, "is_held"))
    return not self.released and runtime.monotime() < self.valid_mono
end

--- lock:valid_until() -> epoch seconds at which the lease ends.
function Lock:valid_until()
    renewal.sync(to_lock(self, "valid_until"))
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
    store.enter(st, "with_lock")
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

return lock
