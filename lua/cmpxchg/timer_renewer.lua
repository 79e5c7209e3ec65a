--- Auto-renew inside nginx: a chain of ngx.timer.at callbacks that writes the
-- lease again every `interval` seconds (a third of the TTL) with the held
-- index, through the lock's own backend (cosockets or the embedded file).
-- The C renewal thread (csrc/renew.c) is never used inside nginx: a thread
-- cannot wake a Lua coroutine nor use the worker's event loop.
--
-- It offers what lock.lua reads from the C renewer: state() -> index, lease
-- end (monotonic), lost, reason; stop(). The timer only updates this object;
-- the lock takes the new index and lease at its next call into the library,
-- and a loss becomes on_lost there, in the caller's Lua, never in the timer.
--
-- One timer at a time per lock (ngx.timer.every would overlap slow runs), and
-- the chain ends by itself when the lock is released, the worker exits
-- (premature), or the lock object was dropped without a release (the timer
-- holds it only weakly), so an abandoned lock lapses after its TTL.
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
    self.busy = true
    local done, ok, idx, _, mono = pcall(self.renew, self.index)
    self.busy = false
    local o = self.options
    if done and ok then
        self.index, self.valid = idx, mono + o.ttl - o.clock_skew
        self.renewals = self.renewals + 1
        if not self.stopped then self:schedule(o.ttl / 3) end
    elseif done and ok == false then
        self.lost = true
        self.reason = "lost: the lease was taken over"
    else
        local err = done and tostring(idx) or tostring(ok)
        if runtime.monotime() + 0.5 >= self.valid then     -- no time left to try again
            self.lost = true
            self.reason = "lost: renewal failed: " .. err
        elseif not self.stopped then
            self:schedule(math.min(0.5, o.ttl / 12))
        end
    end
end

--- Starts renewing. plan: renew(index) -> ok, index, current, mono, wall
-- (the lock's write of its lease), index, valid_mono, options (ttl and
-- clock_skew are read at each renewal), anchor (the lock, held weakly).
function timer_renewer.start(plan)
    local self = setmetatable({
        renew = plan.renew, options = plan.options,
        index = plan.index, valid = plan.valid_mono,
        anchor = setmetatable({ [plan.anchor] = true }, { __mode = "k" }),
        renewals = 0, lost = false, busy = false, stopped = false, scheduled = false,
    }, Renewer)
    self:schedule(plan.options.ttl / 3)
    return self
end

--- index, lease end (monotonic), lost, reason|nil, renewals
function Renewer:state()
    if not self.lost and self.failure and not self.scheduled and not self.busy
            and runtime.monotime() >= self.valid then
        self.lost, self.reason = true, "lost: " .. self.failure
    end
    return self.index, self.valid, self.lost, self.reason, self.renewals
end

--- Stops the chain; when a renewal is being written, waits for its outcome
-- (its new index is the one a release must use).
function Renewer:stop()
    self.stopped = true
    while self.busy do runtime.sleep(0.001) end
    return true
end

return timer_renewer
