--- Waiting by etcd watches (wait.lua's pushed waits): instead of looking
-- every backoff, a waiter opens a watch on what it waits for (one stream
-- that stays open while the wait lasts, Etcd:watch), from the revision after
-- the last one it saw, so that nothing in between is missed, and looks again
-- when the server tells it of the change it needs, or when the lease it saw
-- would end (a dead holder is taken over as when polling), or at its
-- deadline. Renewals of the lease it waits for are read from the stream and
-- only move that bound. A watch that cannot be set up, or that ends early
-- (its member died), turns the wait into a poll: the waiter sleeps its
-- backoff and looks, and the next wait watches again (on another member).
--
-- What each kind of waiter watches:
-- * a campaign, a fair waiter first in line, a lock waiter: the key; the
--   wait ends when it is deleted (released, or its lease deleted by etcd);
-- * a semaphore waiter: its permits (a prefix); the wait ends when one is
--   deleted;
-- * a fair waiter further back: the entry of the waiter just ahead of it
--   (queue.lua), etcd's own mutex's way: the wait ends when that one leaves
--   or would have lapsed, so a hand-off wakes one waiter, not the queue.
--
-- Plain lock waiters that keep losing the race after a release (several
-- were woken by it) queue, so that a release wakes one waiter however many
-- wait: each queued waiter writes an entry as a fair waiter does (its ticket
-- the revision of that write, renewed every waiter_ttl/3) and watches the
-- entry just ahead of its own, or the key when none is. The entry stays with
-- its waiter's lock, and the release deletes it just after the key
-- (wait.released): that delete wakes the next waiter, and nobody else. A
-- holder that never releases: its entry lapses after waiter_ttl, and the
-- next waiter, at that lapse, watches the key itself. The queue only
-- decides who looks first after a release: a barging store:lock, a waiter
-- that is not queued yet, or a fair one may still win the key, and the lock
-- itself is a compare-and-set as always.
local lease = require "cmpxchg.lease"
local runtime = require "cmpxchg.runtime"

local watch = {}

local SLICE = 0.5           -- seconds of one read; between reads ctx.beat() runs
-- seconds one watch lasts at most (a longer wait looks and opens another):
-- a member that stops answering with the stream open (a paused process, a
-- host gone without a reset) tells of no release, and this bounds how long
-- it can hide one; the cost, a look and a watch every MAX_WATCH
local MAX_WATCH = 10
local JOIN_AFTER = 2        -- races lost after a release before a lock waiter queues
local RETRY = 0.5           -- seconds before a failed entry renewal is tried again

--- The monotonic time at which a lease value ends (plus clock_skew), or nil.
local function ends_at(o, value)
    local ends = lease.ends(value, o.expires_field)
    if not ends then return nil end
    return runtime.monotime() + (ends + o.clock_skew - runtime.time()) + 0.001
end

--- A watch of `specs` for the wait ending at `deadline`, or nil.
local function open(w, specs, deadline)
    local seconds = math.min(deadline - runtime.monotime(), MAX_WATCH)
    if seconds <= 0.001 then return nil end
    return (w.st.backend:watch(specs, seconds))
end

--- The next events of `wt` before `until_` (monotonic), ctx.beat() every
-- SLICE: events | nil, code ("timeout": until_ came; else the watch is over).
local function events(wt, ctx, until_)
    while true do
        local left = until_ - runtime.monotime()
        if left <= 0 then return nil, "timeout" end
        local evs, _, code = wt:next(math.min(left, SLICE))
        ctx.beat()
        if evs then return evs end
        if code ~= "timeout" then return nil, code end
    end
end

--- The end of a wait whose watch ended early: a poll's sleep.
local function ended_early(ctx, pause, deadline)
    ctx.sleep(math.max(0, math.min(pause, deadline - runtime.monotime())))
    return nil
end

--- Waits on `spec` (one key or prefix, watched past revision `from`): true
-- and the delete's revision when what it watches is deleted, true at
-- `until_` (the lease seen ends: look), nil at `deadline` or after a watch
-- that ended early (a poll's sleep), "poll" when no watch could be set up.
-- With `renewals`, a PUT moves `until_` to the end of the lease it writes.
local function until_deleted(w, ctx, spec, from, pause, deadline, until_, renewals)
    local wt = open(w, { spec }, deadline)
    if not wt then return "poll" end
    while true do
        local evs, code = events(wt, ctx, math.min(deadline, until_ or deadline))
        if not evs then
            wt:close()
            if code ~= "timeout" then return ended_early(ctx, pause, deadline) end
            if until_ and runtime.monotime() >= until_ and until_ < deadline then return true end
            return nil
        end
        for _, e in ipairs(evs) do
            if e.index > from then
                from = e.index
                if e.type == "DELETE" then
                    wt:close()
                    return true, from
                elseif renewals then
                    until_ = ends_at(w.o, e.value)
                end
            end
        end
    end
end

--- Waits on the key `w.what` (or, `prefix`, on that prefix): true, seen
-- when one is deleted after `since`, true at `until_` (the lease seen ends:
-- look), nil at `deadline`. PUTs after `since` move `until_` to the end of
-- the lease they write (a single key only).
-- `since` 0 (the caller saw no revision: an error, or the key absent) has
-- no revision to watch from: a watch from the start of history would replay
-- old deletes and wake at once, one from now could miss a release just
-- before it; the wait polls. After a wake the watch starts past the last
-- event it was woken by (w.last): the caller has looked since, and an older
-- delete of the prefix (a permit freed and taken again) would wake it again
-- and again.
local function key_wait(w, ctx, since, pause, deadline, until_, prefix)
    since = math.max(since, w.last or 0)
    if since <= 0 then return "poll" end
    local spec = prefix and { prefix = prefix, start = since + 1 }
        or { key = w.what, start = since + 1 }
    local r, deleted = until_deleted(w, ctx, spec, since, pause, deadline, until_, not prefix)
    if not deleted then return r end
    w.last = deleted
    return true, not prefix and { index = 0 } or nil
end

--- A fair waiter behind others: waits on the entry just ahead of it (q.pred)
-- until it leaves, or would have lapsed (it may be dead: look).
local function pred_wait(w, ctx, pause, deadline)
    local p = w.q.pred
    return (until_deleted(w, ctx, { key = p.key, start = p.index + 1 }, p.index, pause,
        deadline, ends_at(w.o, p.value), true))
end

--[[ The chain of queued lock waiters ]]

--- Looks at the queue again: who is just ahead now (q.pred; nil: nobody),
-- and whether that one is the only one (w.next_in_line).
local function relook(w)
    local q = w.chain
    local ahead = q:count_ahead()
    if ahead == nil then q.pred = nil end      -- the store fails: wait on the key
    w.next_in_line = ahead == 1
    w.relook = nil
end

--- Queues the waiter (its entry, then its place); false when the store fails.
local function join(w)
    local q = require("cmpxchg.queue").new(w.st, w.what .. "/waiters/", w.o, w.owner)
    if not q:write() then return false end
    w.chain = q
    relook(w)
    return true
end

--- Renews the entry when due (a failed renewal is tried again RETRY later);
-- true when it had to join again (its place is new).
local function keep(q)
    local ticket = q.ticket
    if not q:keep() then
        q.renew_at = runtime.monotime() + RETRY
        return false
    end
    return q.ticket ~= ticket
end

--- A queued lock waiter's wait: on the entry just ahead (its release or
-- departure wakes this one alone), or on the key when nobody is ahead. The
-- waiter next in line (one entry ahead, most likely the holder's, which a
-- release deletes just after the key) watches the key as well, on the same
-- stream: a release wakes it at the key's delete, one commit sooner, and
-- wakes nobody else.
local function chain_wait(w, ctx, since, pause, deadline, until_)
    local q = w.chain
    if w.relook then relook(w) end
    while true do
        if runtime.monotime() >= deadline then return nil end
        local p = q.pred
        local p_until = p and ends_at(w.o, p.value)
        local key = { key = w.what, start = since + 1 }
        local specs = { p and { key = p.key, start = p.index + 1 } or key }
        if p and w.next_in_line and since > 0 then specs[2] = key end
        local wt = open(w, specs, deadline)
        if not wt then return "poll" end
        local again = false
        while not again do
            local t = math.min(deadline, until_ or deadline,
                runtime.monotime() + q:due(), p_until or deadline)
            local evs, code = events(wt, ctx, t)
            local now = runtime.monotime()
            if not evs then
                if code ~= "timeout" then
                    wt:close()
                    return ended_early(ctx, pause, deadline)
                elseif now >= deadline then
                    wt:close()
                    return nil
                elseif until_ and now >= until_ then
                    wt:close()
                    return true         -- the lease seen is over: look (a takeover)
                end
                if q:due() <= 0 and keep(q) then
                    relook(w)           -- it joined again: its place is new
                    again = true
                elseif p_until and now >= p_until then
                    relook(w)           -- the one ahead may be dead
                    again = true
                end
            else
                for _, e in ipairs(evs) do
                    if p and e.key:lower() == p.key:lower() then
                        if e.index > p.index then
                            p.index = e.index
                            if e.type == "DELETE" then
                                -- it released (its release deletes its entry with the
                                -- key), gave up or was swept: most likely the key is free
                                wt:close()
                                w.relook = true
                                return true, { index = 0 }
                            end
                            p.value = e.value       -- renewed
                            p_until = ends_at(w.o, e.value)
                        end
                    elseif e.index > since then     -- the key itself
                        since = e.index
                        if e.type == "DELETE" then
                            wt:close()
                            if p then w.relook = true end   -- its entry goes next
                            return true, { index = 0 }
                        end
                        until_ = ends_at(w.o, e.value)
                    end
                end
            end
        end
        wt:close()
    end
end

--[[ watch.change(w, ctx, since, pause, left, ends) -> as Waiter:change, or
"poll" when no watch could be set up (the caller polls this wait). ]]
function watch.change(w, ctx, since, pause, left, ends)
    local now = runtime.monotime()
    local deadline = now + left
    local o = w.o
    local until_ = ends and now + (ends + o.clock_skew - runtime.time()) + 0.001 or nil
    local kind = w.kind
    if kind == "permits" or kind == "fair_permits" then
        return key_wait(w, ctx, since, pause, deadline, until_, w.what.prefix)
    elseif kind == "fair" then
        local q = w.q
        if q.ahead == nil then return "poll" end
        if q.ahead > 0 and q.pred then return pred_wait(w, ctx, pause, deadline) end
        return key_wait(w, ctx, since, pause, deadline, until_)
    elseif kind == "lock" then
        if not w.chain and (w.losses or 0) >= JOIN_AFTER then join(w) end
        if w.chain then return chain_wait(w, ctx, since, pause, deadline, until_) end
    end
    return key_wait(w, ctx, since, pause, deadline, until_)
end

return watch
