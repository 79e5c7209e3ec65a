--- Inside nginx: the waiters of one worker for the same thing (a key, a
-- semaphore's permits) of the same store wait behind one of them, so that
-- forty waiting requests cost the server what one does.
--
-- A group per store and key (per worker: module state). One member, the
-- active one, waits as any waiter would (it polls, or watches on etcd) and
-- its caller looks; the others are parked on an ngx.semaphore and do not
-- touch the store. When the active member's acquisition ends (taken, given
-- up, failed) the longest parked one is woken to look and becomes active.
-- A release by a request of the same worker wakes the active member at
-- once (its poll's sleep is a wait on a second semaphore; a release while
-- it reads ends its next sleep at once), so hand-offs inside a worker wait
-- for no poll.
--
-- Nothing here can leak: no timer is used, and no member is counted. A
-- request aborted while parked leaves the semaphore's queue with its
-- coroutine (lua-nginx-module cleans it up); one aborted while active stops
-- showing that it is alive (`beat`, at least every half second of its wait),
-- and after STALE seconds a parked member takes its place. Groups are
-- weakly held: one that no waiter references any more is collected.
local runtime = require "cmpxchg.runtime"

local coalesce = {}

local STALE = 2         -- seconds without a sign of the active member: a parked one takes over
local PARK = 0.5        -- a parked member checks on the active one at least this often
local SLICE = 0.5       -- an active member's poll sleeps in slices of this, showing it is alive

local groups = setmetatable({}, { __mode = "v" })

local semaphore             -- ngx.semaphore, required on first use (lua-resty-core)

--- The group key of a store (its backend and database) and what is waited for.
local function group_key(st, kind, what)
    local origin = st.origin
    local database = origin and origin.options and origin.options.database or ""
    local thing = type(what) == "table" and "prefix " .. what.prefix:lower()
        or "key " .. what:lower()
    return ("%s|%s|%s|%s"):format(st.backend:describe(), tostring(database), kind, thing)
end

local function group_of(w)
    local g = w.group
    if g then return g end
    local name = group_key(w.st, w.kind, w.what)
    g = groups[name]
    if g == nil then
        semaphore = semaphore or require "ngx.semaphore"
        g = { turn = assert(semaphore.new(0)), wake = assert(semaphore.new(0)), beat = 0,
              name = name }
        groups[name] = g
    end
    w.group = g
    return g
end

local function stale(g)
    return runtime.monotime() - g.beat > STALE
end

--- The context of the active member's wait: its poll's sleep ends early
-- when a request of this worker releases (released below).
local function active_ctx(g)
    return {
        sleep = function(seconds)
            local until_ = runtime.monotime() + seconds
            while true do
                local left = until_ - runtime.monotime()
                if left < 0.001 then return end
                local woken = g.wake:wait(math.min(left, SLICE))
                g.beat = runtime.monotime()
                if woken then return end
            end
        end,
        beat = function() g.beat = runtime.monotime() end,
    }
end

--- Waiter:change inside nginx, for waiters that may coalesce: waits as the
-- active member, or parked until it is this one's turn to look (true) or
-- its time is over (nil).
function coalesce.change(w, since, pause, left, ends, holder)
    local g = group_of(w)
    local deadline = runtime.monotime() + left
    if g.active ~= w and (g.active == nil or stale(g)) and not w.parked then
        g.active = w            -- nobody looks for this worker: this one does
    end
    if g.active == w then
        g.beat = runtime.monotime()
        local r, seen = w:inner(active_ctx(g), since, pause, left, ends, holder)
        g.beat = runtime.monotime()
        return r, seen
    end
    w.parked = true
    while true do
        if g.active == nil or stale(g) then
            -- its turn: it looks first (what it saw is old), then waits as the active one
            g.active, g.beat, w.parked = w, runtime.monotime(), nil
            return true
        end
        local t = math.min(deadline - runtime.monotime(), PARK)
        if t < 0.001 then return nil end
        g.turn:wait(t)
    end
end

--- The acquisition of `w` ended: when it was the active member, the longest
-- parked one gets its turn.
function coalesce.leave(w)
    local g = w.group
    w.group = nil
    if g and g.active == w then
        g.active = nil
        if g.turn:count() < 0 then g.turn:post(1) end
    end
end

--- A request of this worker released `key` of `st`: the active member of its
-- group (and of a semaphore's group, for a permit) looks at once.
function coalesce.released(st, key)
    if st.backend == nil then return end
    local names = { group_key(st, "lock", key), group_key(st, "leader", key) }
    local prefix = key:match("^(.*/permits/)%d+$")
    if prefix then names[3] = group_key(st, "permits", { prefix = prefix }) end
    for _, name in ipairs(names) do
        local g = groups[name]
        -- posted even when the active member does not sleep now: it may be
        -- reading the key (a read answered before this release), and would
        -- then sleep a whole backoff; its next sleep ends at once instead.
        -- At most one post is kept: a stale one costs one early look.
        if g and g.wake:count() < 1 then g.wake:post(1) end
    end
end

--- The number of groups alive (tests: none is left once its waiters are gone).
function coalesce.count()
    local n = 0
    for _ in pairs(groups) do n = n + 1 end
    return n
end

return coalesce
