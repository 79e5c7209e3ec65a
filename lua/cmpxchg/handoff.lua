--- A lock passed on in one commit (etcd): a release that finds a queued
-- waiter (watch.lua's chain) writes the lock for that waiter, rather than
-- deleting it and leaving the waiter to write it again. A hand-off then
-- costs one Raft commit, not two: the release's txn, whose event wakes the
-- waiter, which holds the lock as it reads it, without a write of its own.
--
-- The waiter offers it in its queue entry ("Handoff": its lease's length and
-- field, an etcd lease of its own that outlives any lock written for it
-- before its deadline, and that deadline); the entry's name is its
-- waiter's alone, and the lock written for it carries that name
-- ("Handoff") beside the waiter's own Owner, Host and Pid, so the waiter
-- knows the lock is its own and nobody else takes it for theirs.
--
-- The release reads the oldest entries (from the member it asks: no round
-- of the cluster) and sends one txn: if the lock is still ours, then if the
-- entry it chose is still at the index it read (alive, and the same
-- waiter), the lock is written for it, else deleted; our own entry goes in
-- the same txn. A stale read can only choose an entry that is gone by now
-- (the txn then deletes the lock, as a plain release does): entries are
-- created at ever higher revisions, so none older than the one it read can
-- have appeared since.
--
-- The release deletes the releaser's own entry in the same txn, whether it
-- passes the lock on or deletes it: between two commits another holder could
-- pass the lock to that entry, whose waiter is gone. An entry that was
-- passed the lock once is never passed it again (its holder left it
-- behind), and goes with the next release.
--
-- A waiter that gives up leaves the queue first and then looks whether a
-- release passed it the lock just before, and takes it if so (lock.lua).
-- A waiter that dies while queued may be passed the lock within its entry's
-- last waiter_ttl, as a holder that dies: the lock then ends with its lease,
-- and whoever takes that lease over (lock.lua: l.took_from) passes nothing
-- to the dead one's entry and deletes it with its own release: a dead
-- waiter is passed the lock at most once, a dead holder never again.
local json = require "cmpxchg.json"
local lease = require "cmpxchg.lease"
local runtime = require "cmpxchg.runtime"

local handoff = {}

local SUFFIX = "/waiters/"      -- queue.SUFFIX (queue.lua requires lock.lua, which requires us)
local LOOK = 4                  -- entries a release reads: ours, a dead one or two, the next
local MAX_TTL = 1e10            -- lock.lua's MAX_LEASE

--- What a queued lock waiter's entry offers, so that a release can write the
-- lock for it before `deadline` (epoch seconds): nil when the backend cannot
-- pass locks on or its lease could not be granted (the waiter then simply
-- waits to write the lock itself). The lease is granted here, while it
-- waits, not on the hand-off's path.
function handoff.offer(backend, o, deadline)
    if not backend.pass then return nil end
    local id = backend:lease_for(deadline + o.ttl + o.expires_grace)
    if not id then return nil end
    return { Ttl = o.ttl, Field = o.expires_field, Lease = id, Until = deadline }
end

--- An offer read from the store, checked (anything may be there), or nil.
local function offered(value, now)
    local h = value.Handoff
    if type(h) ~= "table" or type(value.Owner) ~= "string" then return nil end
    if type(h.Ttl) ~= "number" or not (h.Ttl > 0 and h.Ttl <= MAX_TTL)
            or type(h.Field) ~= "string" or h.Field == ""
            or type(h.Lease) ~= "string" or not h.Lease:find("^%d+$") or #h.Lease > 19
            or type(h.Until) ~= "number" or now > h.Until then
        return nil
    end
    return h
end

--- The entry to pass the lock on to, and its offer: the oldest live waiter
-- entry but ours (`own`, its name) and but the one of the holder whose lease
-- we took over (`dead`, its owner: its entry is added to `drop`), when it
-- offers one. A fair waiter first in line (no offer) looks for itself:
-- nobody is passed the lock over it.
local function next_in_line(entries, own, dead, now, drop)
    for _, e in ipairs(entries) do
        local v = e.value
        local ends = lease.ends(v, "ExpiresAt")     -- nil: not a waiter's entry
        if e.key == own then            -- luacheck: ignore 542
        elseif type(v) == "table" and (v.Passed ~= nil or (dead and v.Owner == dead)) then
            -- passed the lock before, and we hold it now: an entry its holder
            -- left behind (it is never passed the lock twice); or the entry of
            -- the holder whose lease we took over
            drop[#drop + 1] = e.key
        elseif ends and now <= ends then    -- alive (its waiter renews it)
            local h = offered(v, now)
            if h then return e, h end
            return nil
        end
    end
    return nil
end

--[[ handoff.release(backend, key, index, own, dead) -> tried, ok, index,
code: the release of the lock at `key` held at `index` (`own`: the
releaser's own queue entry, a queue.lua entry, or nil; `dead`: the owner of
the lease it took over, if it did: that holder died or was paused, and its
entry, if any, is passed nothing and goes with the txn, so that a dead
waiter is passed the lock at most once). tried false: nobody to pass it to
(or the queue could not be read, or the waiter's lease is gone): the caller
deletes the lock as ever. Else ok, index, code as lease.delete's; when the
lock was passed on, our entry went with it (own.index is then nil). ]]
function handoff.release(backend, key, index, own, dead)
    local entries = backend:oldest(key .. SUFFIX, LOOK)
    if not entries then return false end
    local now = runtime.time()
    local mine = own and own.index and own.key
    local drop = { mine }
    local to, h = next_in_line(entries, mine, dead, now, drop)
    -- nobody to pass to: still one txn for the lock and our entry, so that no
    -- release comes between them and passes the lock to our entry
    if not to and #drop == 0 then return false end
    local text
    if to then
        local value = lease.value({ expires_field = h.Field }, to.value.Owner, now + h.Ttl)
        value.Host, value.Pid, value.Handoff = to.value.Host, to.value.Pid, to.key
        to.value.Passed = value     -- its entry tells its waiter, whatever that one watches
        to.text = assert(json.encode(to.value))
        text = assert(json.encode(value))
    end
    local ok, idx, code = backend:pass(key, index, to, text, h and h.Lease, drop)
    if ok then
        if mine then own.index = nil end
        return true, true, idx
    elseif ok == false then
        return true, false, idx
    elseif code == "lease" then
        return false            -- the waiter's lease is gone: it is gone too
    elseif lease.AMBIGUOUS[code] then
        -- unknown outcome, as lease.delete settles a delete's: gone or passed
        -- on means released; another index, taken by someone else
        local now_index, now_value = backend:get(key)
        if now_index == 0 or (to and now_index and now_index ~= index
                and type(now_value) == "table" and now_value.Handoff == to.key) then
            return true, true, now_index
        elseif now_index ~= nil and now_index ~= index then
            return true, false, now_index
        end
    end
    return true, nil, idx, code
end

--[[ handoff.taken(index, value, q, o) -> w | nil: when the lock value
`value` (at `index`) was passed to queue entry `q` (lock options `o`), the
write as lease.write reports one: its start estimated from the lease's end
as the releaser wrote it (never later than now), for the validity counted
from it; nil when it is not ours. ]]
function handoff.taken(index, value, q, o)
    if type(value) ~= "table" or value.Handoff ~= q.key or value.Owner ~= q.owner then
        return nil
    end
    local ends = lease.ends(value, o.expires_field)
    if not ends then return nil end
    local mono, wall = runtime.monotime(), runtime.time()
    local started = math.min(wall, ends - o.ttl)
    return { ok = true, index = index, value = value, wall = started,
             mono = mono - (wall - started) }
end

return handoff
