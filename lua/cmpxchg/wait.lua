--- The one place where a waiter waits for the store to change: a lock, a
-- permit, a fair queue or an election that finds what it wants taken waits
-- through a waiter of this file, and then looks again.
--
-- How it waits depends on where it runs and on the backend:
-- * polling (RavenDB, the embedded store, an etcd store opened with
--   watch = false): a sleep of the length the caller chose (its backoff, cut
--   short where a lease it saw ends), through the runtime seam, so that it
--   yields inside nginx;
-- * pushed (etcd): a watch on what the waiter waits for (watch.lua), which
--   ends the wait as soon as the key is released, or when the lease it saw
--   ends, whichever comes first; plain lock waiters that lose races queue so
--   that a release wakes one of them, not all (watch.lua says how);
-- * inside nginx, the waiters of one worker for the same thing coalesce
--   behind one of them (coalesce.lua): the others wait on an ngx.semaphore
--   until it is their turn to look, and a release by a request of the same
--   worker wakes the one that looks at once.
-- The callers look again whatever ended the wait, so none of this can make a
-- waiter take what it must not: it only decides when they look.
local runtime = require "cmpxchg.runtime"

local wait = {}

local Waiter = {}
Waiter.__index = Waiter

-- the kinds of waiters that wait for nothing of their own (no queue entry
-- to keep, no place to hold): they may coalesce behind another one
local SHARED = { lock = true, leader = true, permits = true }

--[[ w = wait.new(st, what, kind, o, owner [, q]): the waiter of one
acquisition. `what` is the key ("k") or the prefix ({prefix = "k/permits/"})
whose change ends a wait; kind "lock" (store:lock), "fair" (a fair lock: `q`
is its queue entry, queue.lua), "leader" (a campaign) or "permits" (a
semaphore); `o` the lock options (lock.options), `owner` the id the
acquisition writes. ]]
function wait.new(st, what, kind, o, owner, q)
    return setmetatable({ st = st, what = what, kind = kind, o = o, owner = owner, q = q },
        Waiter)
end

--- The default of a waiter's context: plain sleeps, nobody to tell.
local PLAIN = { sleep = function(s) runtime.sleep(s) end, beat = function() end }

--[[ w:change(since, pause, left, ends, holder) -> true, seen | nil:
waits for `what` to change after index `since` (the highest index the caller
has seen of it, 0: none). `pause` is how long a polling waiter sleeps; a
waiter that is told of changes waits until one comes, at most `left` seconds
(the caller's deadline) and no later than `ends` (epoch seconds: the end of
the lease it waits for, clock_skew is added here). `holder` is that lease's
value. true when a change ended the wait (seen = {index = 0} when the key is
known to be absent now), nil when the time merely passed. ]]
function Waiter:change(since, pause, left, ends, holder)
    if self.woke_absent then
        self.losses = (self.losses or 0) + 1   -- it was absent, and the caller did not get it
        self.woke_absent = nil
    end
    local r, seen
    if SHARED[self.kind] and runtime.nginx and self:coalescing() then
        r, seen = require("cmpxchg.coalesce").change(self, since, pause, left, ends, holder)
    else
        r, seen = self:inner(PLAIN, since, pause, left, ends, holder)
    end
    self.woke_absent = seen ~= nil and seen.index == 0 or nil
    return r, seen
end

--- Whether this waiter coalesces (inside nginx; the store's coalesce option).
function Waiter:coalescing()
    local origin = self.st.origin
    return not (origin and origin.options and origin.options.coalesce == false)
end

--- The wait itself, told by `ctx` how to sleep and whom to show it is alive.
function Waiter:inner(ctx, since, pause, left, ends, holder)
    local backend = self.st.backend
    if backend and backend.can_watch and backend.watch then
        local r, seen = require("cmpxchg.watch").change(self, ctx, since, pause, left, ends,
            holder)
        if r ~= "poll" then return r, seen end
    end
    ctx.sleep(math.min(pause, left))
    return nil
end

--- The acquisition ended (`l`, the lock, when it was taken): whatever the
-- waiter holds is given up, or handed to the lock (a queue entry that its
-- release deletes).
function Waiter:close(l)
    if self.group then require("cmpxchg.coalesce").leave(self) end
    local q = self.chain
    self.chain = nil
    if q then
        if l then l.wait_entry = q else q:leave() end
    end
end

--- After `l`'s release (true or false: its lease is gone): its queue entry
-- goes, and the waiters of this worker for its key are told at once.
function wait.released(st, key, l)
    local q = l.wait_entry
    if q then
        l.wait_entry = nil
        q:leave()
    end
    if runtime.nginx then require("cmpxchg.coalesce").released(st, key) end
end

--- wait.change(st, what, since, seconds): one wait of `seconds` by a waiter
-- of its own (nothing pushed it can use alone: it polls).
function wait.change(st, what, since, seconds)     -- luacheck: ignore 212
    runtime.sleep(seconds)
    return nil
end

return wait
