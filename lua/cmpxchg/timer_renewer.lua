--- Auto-renew inside nginx: a chain of ngx.timer.at callbacks that runs
-- lease.renew (the turn the renewal thread runs elsewhere) through the
-- store's own backend (cosockets or the embedded file). A thread cannot
-- wake a Lua coroutine nor use the worker's event loop, so none is used here.
--
-- It offers what renewal.lua reads from every renewer: state() -> index,
-- lease end (monotonic), lost, reason, renewals; stop(). The timer only
-- updates this object; the lock takes the new index and lease at its next
-- call into the library, and a loss becomes on_lost there, in the caller's
-- Lua, never in the timer.
--
-- One timer at a time per lock (ngx.timer.every would overlap slow runs), and
-- the chain ends by itself when the lock is released, the worker exits
-- (premature), or the lock object was dropped without a release (the timer
-- holds it only weakly), so an abandoned lock lapses after its TTL.
local lease = require "cmpxchg.lease"
local runtime = require "cmpxchg.runtime"

local ngx = rawget(_G, "ngx")

local Renewer = {}
Renewer.__index = Renewer

local timer_renewer = {}

local tick                      -- the timer callback, below

function Renewer:schedule(delay)
    local ok, err = ngx.timer.at(delay, tick, self)
    if not ok then
        self.failure = "renewal could not be scheduled: " .. tostring(err)
        return false
    end
    self.scheduled = true
    return true
end

tick = function(premature, self)
    self.scheduled = false
    if self.stopped then return end
    if premature or next(self.anchor) == nil then
        self.stopped = true     -- the worker is exiting, or nobody holds the lock object
        return
    end
    local r = self.lease
    local backend = self.store.backend
    local outcome
    if backend == nil then
        r.reason = "lost: renewal failed: closed: the store was closed"
        outcome = runtime.monotime() + 0.5 >= r.valid and "lost" or "failed"
    else
        self.busy = true
        local done, result = pcall(lease.renew, backend, r)
        self.busy = false
        outcome = result
        if not done then
            r.reason = "lost: renewal failed: " .. tostring(result)
            outcome = runtime.monotime() + 0.5 >= r.valid and "lost" or "failed"
        end
    end
    if outcome == "lost" then
        self.lost = true
    elseif not self.stopped then
        self:schedule(lease.next_turn(r, outcome))
    end
end

--- Starts renewing lease record `r` (lease.renew's) of a lock of store
-- `st`; `anchor` (the lock) is held weakly.
function timer_renewer.start(st, r, anchor)
    local self = setmetatable({
        store = st, lease = r,
        anchor = setmetatable({ [anchor] = true }, { __mode = "k" }),
        lost = false, busy = false, stopped = false, scheduled = false,
    }, Renewer)
    self:schedule(r.options.ttl / 3)
    return self
end

--- index, lease end (monotonic), lost, reason|nil, renewals
function Renewer:state()
    local r = self.lease
    if not self.lost and self.failure and not self.scheduled and not self.busy
            and runtime.monotime() >= r.valid then
        self.lost, r.reason = true, "lost: " .. self.failure
    end
    return r.index, r.valid, self.lost, self.lost and r.reason or nil, r.renewals
end

--- Stops the chain; when a renewal is being written, waits for its outcome
-- (its new index is the one a release must use). Returns state().
function Renewer:stop()
    self.stopped = true
    while self.busy do runtime.sleep(0.001) end
    return self:state()
end

return timer_renewer
