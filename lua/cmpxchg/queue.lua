--- Fair waiting (`fair = true`): first come, first served, for locks and
-- semaphores, on every backend, with nothing but compare-exchange.
--
-- Each waiter puts an entry of its own under `<key>/waiters/` (a fresh UUID
-- as the name) and waits its turn. Its place in the queue is the index the
-- store gave that first write: every backend draws indexes from one counter
-- that only grows (RavenDB's Raft index, etcd's revision, the embedded file's
-- index), so the indexes of the entries order the waiters as they arrived, as
-- etcd's own mutex orders its waiters by create revision. A waiter may take
-- the lock when no live entry has a lower index than its own (for a semaphore,
-- when fewer live entries are ahead of it than there are free permits).
--
-- An entry is a lease too: `{"ExpiresAt", "Owner", "Host", "Pid", "Ticket"}`.
-- Its waiter writes it again (by compare-and-set, keeping its place in
-- "Ticket") every `waiter_ttl/3` seconds while it waits, and deletes it once
-- it holds the lock or gives up. A waiter that dies stops writing: once its
-- entry's time is over (plus `clock_skew`) the others no longer count it and
-- the first to see it deletes it (by compare-and-set on the index it saw), so
-- a dead waiter holds the queue up for at most `waiter_ttl`. A waiter that
-- was only slow and finds its entry gone joins again, at the back.
--
-- The entry's name is its waiter's alone, so a write whose answer was lost is
-- recognised at the next one: whatever is there is ours (its index is taken
-- over), and a ghost entry of a live waiter never blocks the queue.
--
-- Fairness holds among fair waiters: a plain store:lock on the same key does
-- not look at the queue. Lock safety never depends on the queue (a stale
-- listing, a lagging RavenDB follower, can only cost fairness: the lock
-- itself is still taken by compare-and-set).
local check = require "cmpxchg.check"
local json = require "cmpxchg.json"
local lease = require "cmpxchg.lease"
local lock = require "cmpxchg.lock"
local runtime = require "cmpxchg.runtime"
local store = require "cmpxchg.store"
local wait = require "cmpxchg.wait"

local AMBIGUOUS = lease.AMBIGUOUS

local queue = { SUFFIX = "/waiters/" }

-- the dead entries one look deletes at most (the others are left for the next)
local SWEEP = 8

local ENTRY = { expires_field = "ExpiresAt" }

local Queue = {}
Queue.__index = Queue

--- A waiter (not queued yet) under `prefix` for options `o` (lock.options'):
-- waiter_ttl, clock_skew, expires_grace.
function queue.new(st, prefix, o, owner)
    return setmetatable({ st = st, prefix = prefix, key = prefix .. runtime.uuid(), o = o,
                          owner = owner }, Queue)
end

--- The place of an entry in the queue.
local function ticket_of(item)
    local t = type(item.value) == "table" and item.value.Ticket
    return type(t) == "number" and t or item.index
end

--- Writes our entry: joins (index 0) or renews it (compare-and-set on the
-- index we hold). true, or nil, err, code on a store failure.
function Queue:write()
    local backend = store.enter(self.st, "lock")
    local o = self.o
    local mono, wall = runtime.monotime(), runtime.time()
    local ends = wall + o.waiter_ttl
    local value = lease.value(ENTRY, self.owner, ends)
    value.Ticket = self.ticket
    value.Handoff = self.handoff        -- a plain lock waiter's offer (handoff.lua)
    local ok, index, current = backend:put(self.key, assert(json.encode(value)), self.index or 0,
        ends + o.expires_grace)
    if ok then
        self.index = index
        self.ticket = self.ticket or index     -- the first write's index: our place
    elseif ok == false and index > 0 then
        -- our name alone: a write of ours whose answer was lost is there
        self.index = index
        if self.ticket == nil then
            local t = type(current) == "table" and current.Ticket
            self.ticket = type(t) == "number" and t or index
        end
        mono = runtime.monotime() - o.waiter_ttl    -- renew it at the next turn
    elseif ok == false then
        -- gone: deleted as dead (we were stopped past its end) or swept; the
        -- back of the queue it is
        self.index, self.ticket, self.ahead = nil, nil, nil
        return self:write()
    else
        return nil, index, current
    end
    self.renew_at = mono + o.waiter_ttl / 3
    self.writes = (self.writes or 0) + 1
    return true
end

--- The live entries ahead of ours (all of them while we are not queued), the
-- dead ones swept on the way: n, or nil, err, code.
function Queue:count_ahead()
    local backend = store.enter(self.st, "lock")
    local items, err, code = backend:list(self.prefix, 0, nil)
    if items == nil then return nil, err, code end
    local now, skew = runtime.time(), self.o.clock_skew
    local mine, ticket = self.key:lower(), self.ticket
    local ahead, swept = 0, 0
    local pred, pred_ticket         -- the live entry just ahead of ours
    for _, item in ipairs(items) do
        local ends = lease.ends(item.value, "ExpiresAt")
        -- what is not a waiter entry is left alone; ours is not ahead of us
        local other = ends ~= nil and type(item.key) == "string" and item.key:lower() ~= mine
        if not other then       -- luacheck: ignore 542
        elseif now > ends + skew then
            if swept < SWEEP then       -- dead: gone for everyone (by CAS: it may just renew)
                swept = swept + 1
                backend:delete(item.key, item.index)
            end
        else
            local t = ticket_of(item)
            if ticket == nil or t < ticket or (t == ticket and item.key:lower() < mine) then
                ahead = ahead + 1
                if pred == nil or t > pred_ticket or (t == pred_ticket and
                        item.key:lower() > pred.key:lower()) then
                    pred, pred_ticket = item, t
                end
            end
        end
    end
    self.looks = (self.looks or 0) + 1
    -- the one a waiter watches instead of the whole queue (watch.lua)
    self.pred = pred and { key = pred.key, index = pred.index, value = pred.value } or nil
    return ahead
end

--- Joins on the first call, and renews the entry when due: true, or nil,
-- err, code on a store failure.
function Queue:keep()
    if self.index == nil or runtime.monotime() >= self.renew_at then
        return self:write()
    end
    return true
end

--- Our turn? Joins on the first call and renews the entry when due: true when
-- fewer than `slots` live waiters are ahead of us, false when not, nil, err,
-- code on a store failure. Nobody gets ahead of the first waiter, so once
-- first it no longer lists the queue.
function Queue:turn(slots)
    local ok, err, code = self:keep()
    if not ok then return nil, err, code end
    if self.ahead == 0 then return true end
    local n
    n, err, code = self:count_ahead()
    if n == nil then return nil, err, code end
    if self.ahead and n < self.ahead then self.moved_at = runtime.monotime() end
    self.ahead = n
    return n < slots
end

--- Seconds until the entry must be written again (math.huge when not queued).
function Queue:due()
    if self.index == nil then return math.huge end
    return math.max(self.renew_at - runtime.monotime(), 0)
end

--- Leaves the queue: deletes our entry (best effort: one that cannot be
-- deleted now lapses after waiter_ttl).
function Queue:leave()
    local index = self.index
    self.index, self.ahead = nil, nil
    local backend = self.st.backend
    if index == nil or backend == nil then return end
    local ok, now_index = backend:delete(self.key, index)
    if ok == false and type(now_index) == "number" and now_index > 0 then
        -- ours (nobody else writes our name): a write whose answer was lost
        backend:delete(self.key, now_index)
    end
end

-- the place in the queue from which a waiter backs off as far as backoff_max
local FAR = 8

--- The longest pause of a waiter with q.ahead waiters ahead. While the queue
-- moves (it moved within the last two backoff_max), a waiter n places from
-- the head looks at least every n/8 of backoff_max: each hand-off waits for
-- the next in line to notice that its turn came, and a waiter backed off to
-- backoff_max would stall every hand-off it is next for. From the 8th place
-- on, and while the queue stands still (a long hold), backoff_max, so that
-- waiting in a queue costs the store what plain waiting costs, but for the
-- few next in line while hand-offs come quickly (with full jitter, the
-- waiter n places back then looks about 16/n times per backoff_max). 8 fair
-- contenders on the embedded store, back to back on one loaded machine: 3x
-- the acquisitions of no cap, 1.75x those of a cap over 4 places.
function queue.pause_cap(q, o)
    local ahead, moved = q.ahead, q.moved_at
    if ahead == nil or ahead >= FAR or moved == nil
            or runtime.monotime() - moved > 2 * o.backoff_max then
        return o.backoff_max
    end
    return math.max(o.backoff_min, o.backoff_max * math.max(ahead, 1) / FAR)
end

--[[ The fair lock ]]

--- A copy of the caller's options for one try of store:lock at once (timeout
-- 0), not fair, with the owner the whole acquisition writes.
function queue.try_options(opts, owner)
    local try = {}
    for k, v in pairs(opts or {}) do try[k] = v end
    try.fair, try.timeout, try.owner = nil, 0, owner
    return try
end

local function add_stats(stats, s)
    if s == nil then return end
    stats.attempts = stats.attempts + (s.attempts or 0)
    stats.writes = stats.writes + (s.writes or 0)
    stats.takeovers = stats.takeovers + (s.takeovers or 0)
end

--- lock, err, code [, stats] = store:lock(key, {fair = true, ...})
function queue.lock(st, key, opts)
    local backend = store.enter(st, "lock")
    check.key(key, 1, "lock")
    local o = lock.options(opts, 2, "lock")
    if o.timeout > 0 then runtime.check_yield("store:lock with a timeout") end
    local owner = o.owner or runtime.uuid()
    local try = queue.try_options(opts, owner)
    local q = queue.new(st, key .. queue.SUFFIX, o, owner)
    local start = runtime.monotime()
    local deadline = start + o.timeout
    local stats = { attempts = 0, writes = 0, waited = 0, takeovers = 0 }
    local step = o.backoff_min
    local holder, ends, seen = nil, nil, 0
    local failure, failure_code
    local waiter

    local function done(l, err, code)
        if waiter then waiter:close() end
        q:leave()
        stats.writes = stats.writes + (q.writes or 0)
        stats.waited = runtime.monotime() - start
        if l then
            l.attempts = stats.attempts
            l.writes = stats.writes
            l.takeovers = stats.takeovers
            l.waited = stats.waited
            l.contended = stats.contended
            return l
        end
        return nil, err, code, stats
    end

    --- One try at the lock itself: the lock, or nil and whether to go on.
    local function try_lock()
        local l, err, code, s = lock.take(st, key, try)
        add_stats(stats, l or s)
        if l then return l end
        if code == "timeout" then           -- held: who holds it, until when
            local index, value = backend:get(key)
            stats.attempts = stats.attempts + 1
            if type(index) == "number" and index > 0 then
                holder, ends = value, lease.ends(value, o.expires_field)
                seen = math.max(seen, index)
                stats.contended = true
            end
            return nil
        end
        failure, failure_code = err, code
        return nil, not AMBIGUOUS[code]       -- final: give up
    end

    -- nobody waits: take it at once (uncontended, a fair lock costs a list and a put)
    local n, err, code = q:count_ahead()
    stats.attempts = stats.attempts + 1
    if n == nil then
        if not AMBIGUOUS[code] or o.timeout == 0 then return done(nil, err, code) end
        failure, failure_code = err, code
    elseif n == 0 then
        local l, final = try_lock()
        if l then return done(l) end
        if final then return done(nil, failure, failure_code) end
    else
        stats.contended = true
    end

    while true do
        local left = deadline - runtime.monotime()
        if o.timeout == 0 or left <= 0 then
            if failure then return done(nil, failure, failure_code) end
            local ahead = q.ahead or n or 0
            return done(nil, ("timeout: lock '%s' is held by %s, %d %s ahead (fair; %d %s "
                .. "in %.3f s)"):format(key, holder and
                    lease.describe_holder(holder, o.expires_field) or "nobody now",
                    ahead, ahead == 1 and "waiter" or "waiters",
                    stats.attempts, stats.attempts == 1 and "attempt" or "attempts",
                    runtime.monotime() - start), "timeout")
        end
        local pause
        pause, step = store.backoff(step, o.backoff_min, o.backoff_max)
        if ends and q.ahead == 0 then
            pause = math.min(pause, math.max(ends + o.clock_skew - runtime.time(), 0) + 0.001)
        end
        pause = math.min(pause, queue.pause_cap(q, o), q:due(), left)
        -- pushed: the entry just ahead leaving, or (first) the lock released;
        -- never past the entry's renewal
        waiter = waiter or wait.new(st, key, "fair", o, owner, q)
        waiter:change(seen, pause, math.min(left, q:due()), q.ahead == 0 and ends or nil,
            holder)

        failure, failure_code = nil, nil
        local was_first = q.ahead == 0
        local go
        go, err, code = q:turn(1)
        stats.attempts = stats.attempts + 1
        if go and not was_first then step = o.backoff_min end     -- first now: look often
        if go == nil then
            if not AMBIGUOUS[code] then return done(nil, err, code) end
            failure, failure_code = err, code
        elseif go then
            -- read first, write only when it can win (as store:lock does while waiting)
            local index, value, rcode = backend:get(key)
            stats.attempts = stats.attempts + 1
            if index == nil then
                if not AMBIGUOUS[rcode] then return done(nil, value, rcode) end
                failure, failure_code = value, rcode
            else
                seen = math.max(seen, index)
                holder, ends = value, lease.ends(value, o.expires_field)
                if index == 0 or (ends and runtime.time() > ends + o.clock_skew) then
                    local l, final = try_lock()
                    if l then return done(l) end
                    if final then return done(nil, failure, failure_code) end
                else
                    stats.contended = true
                end
            end
        end
    end
end

return queue
