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
-- Plain lock waiters queue at their first wait, so that a release wakes one
-- waiter however many wait: each queued waiter writes an entry as a fair
-- waiter does (its ticket the revision of that write, renewed every
-- waiter_ttl/3), offering a hand-off (handoff.lua), and watches the entry
-- just ahead of its own (or the key when none is) and its own entry. A
-- release passes the lock to the first live waiter in the same txn that
-- deletes the releaser's own entry, and writes that waiter's entry too: the
-- waiter learns it holds the lock from its own entry, from the key, or when
-- it next reads the key. The entry stays with its waiter's lock until its
-- release. A holder that never releases: its entry lapses after waiter_ttl,
-- and the next waiter, at that lapse, watches the key itself. A release that
-- finds nobody to pass to deletes the lock as ever: then the queue only
-- decides who looks first, and a barging store:lock, a waiter not queued
-- yet, or a fair one may still win the key. The lock itself is always a
-- compare-and-set.
local handoff = require "cmpxchg.handoff"
local lease = require "cmpxchg.lease"
local runtime = require "cmpxchg.runtime"

local watch = {}

local SLICE = 0.5           -- seconds of one read; between reads ctx.beat() runs
-- seconds one watch lasts at most (a longer wait looks and opens another):
-- a member that stops answering with the stream open (a paused process, a
-- host gone without a reset) tells of no release, and this bounds how long
-- it can hide one; the cost, a look and a watch every MAX_WATCH
local MAX_WATCH = 10
-- races lost after a release before a lock waiter queues: none, so that
-- every waiter can be passed the lock (2 before the hand-off: joining costs
-- two requests, and a release then only woke the queue's head)
local JOIN_AFTER = 0
local RETRY = 0.5           -- seconds before a failed entry renewal is tried again

--- The monotonic time at which a lease value ends (plus clock_skew), or nil.
local function ends_at(o, value)
    local ends = lease.ends(value, o.expires_field)
    if not ends then return nil end
    return runtime.monotime() + (ends + o.clock_skew - runtime.time()) + 0.001
end

--- A watch of `specs` for the wait ending at `deadline`, or nil. A key is
-- watched from now on, not from the revision the waiter saw: etcd keeps a
-- watch that starts at an older revision "unsynced", and tells it of every
-- event, the new ones too, only when its sync loop comes round (every
-- 100 ms), which made hand-offs 50 ms late on average. What changed in
-- between is read instead, once the watch is set up, and handed to the
-- waiter as the events it missed (wt.missed): the key's write since the
-- revision it saw, or its delete. A prefix cannot be read so (a delete
-- leaves nothing to list): it is watched from its revision, as before.
local function open(w, specs, deadline)
    local seconds = math.min(deadline - runtime.monotime(), MAX_WATCH)
    if seconds <= 0.001 then return nil end
    local backend = w.st.backend
    local now = {}
    for i, spec in ipairs(specs) do
        now[i] = spec.key and { key = spec.key } or spec
    end
    local wt = backend:watch(now, seconds)
    if not wt then return nil end
    local gap = {}
    for _, spec in ipairs(specs) do
        if spec.key and spec.start <= (wt.revision or math.huge) then gap[#gap + 1] = spec end
    end
    if #gap == 0 then return wt end
    local keys = {}
    for i, spec in ipairs(gap) do keys[i] = spec.key end
    local now_there = backend:get_many(keys)
    if not now_there then
        wt:close()
        return nil
    end
    local missed = {}
    for i, spec in ipairs(gap) do
        local r = now_there[i]
        if r.index == 0 then        -- deleted since: by the watch's revision, as far as we know
            local at = wt.revision ~= math.huge and wt.revision or spec.start
            missed[#missed + 1] = { key = spec.key, type = "DELETE",
                                    index = math.max(at, spec.start) }
        elseif r.index >= spec.start then
            missed[#missed + 1] = { key = spec.key, type = "PUT", index = r.index, value = r.value }
        end
    end
    wt.missed = #missed > 0 and missed or nil
    return wt
end

--- The next events of `wt` before `until_` (monotonic), ctx.beat() every
-- SLICE: events | nil, code ("timeout": until_ came; else the watch is over).
local function events(wt, ctx, until_)
    local missed = wt.missed
    if missed then
        wt.missed = nil
        return missed
    end
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

--- Queues the waiter (its entry, offering a hand-off until `deadline`, epoch
-- seconds; then its place); false when the store fails.
local function join(w, deadline)
    local q = require("cmpxchg.queue").new(w.st, w.what .. "/waiters/", w.o, w.owner)
    q.handoff = handoff.offer(w.st.backend, w.o, deadline)
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
        if not p and since <= 0 then return "poll" end     -- as key_wait: no revision to watch from
        local p_until = p and ends_at(w.o, p.value)
        local key = { key = w.what, start = since + 1 }
        local specs = { p and { key = p.key, start = p.index + 1 } or key }
        if p and w.next_in_line and since > 0 then specs[#specs + 1] = key end
        -- its own entry: a release that passes it the lock writes it there too
        if q.handoff and q.index then
            specs[#specs + 1] = { key = q.key, start = q.index + 1 }
        end
        local mine = q.key:lower()
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
                -- one response may hold both the entry's delete and the key's
                -- change (a release does both in one txn): all are read first
                local pred_gone, key_now       -- key_now: what the key's last event says
                for _, e in ipairs(evs) do
                    local ek = e.key:lower()
                    if ek == mine then
                        local lock = type(e.value) == "table" and e.value.Passed
                        if e.type ~= "DELETE" and handoff.taken(e.index, lock, q, w.o) then
                            key_now = { index = e.index, value = lock }     -- passed to us
                        end
                    elseif p and ek == p.key:lower() then
                        if e.index > p.index then
                            p.index = e.index
                            if e.type == "DELETE" then
                                -- it released (its release deletes its entry with the
                                -- key), gave up or was swept: most likely the key is free
                                pred_gone = true
                            else
                                p.value = e.value       -- renewed
                                p_until = ends_at(w.o, e.value)
                            end
                        end
                    elseif e.index > since then     -- the key itself
                        since = e.index
                        if e.type == "DELETE" then
                            key_now = { index = 0 }
                        elseif handoff.taken(e.index, e.value, q, w.o) then
                            key_now = { index = e.index, value = e.value }  -- passed to us
                        else
                            key_now = false         -- held (again): look when it ends
                            until_ = ends_at(w.o, e.value)
                        end
                    end
                end
                if pred_gone or key_now then
                    wt:close()
                    if p and (pred_gone or key_now.index == 0) then w.relook = true end
                    -- the key's own news first; a predecessor gone says "most likely free"
                    if key_now then return true, key_now end
                    return true, key_now == nil and { index = 0 } or nil
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
        if not w.chain and (w.losses or 0) >= JOIN_AFTER then join(w, runtime.time() + left) end
        if w.chain then return chain_wait(w, ctx, since, pause, deadline, until_) end
    end
    return key_wait(w, ctx, since, pause, deadline, until_)
end

return watch
