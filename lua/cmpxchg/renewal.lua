--- Auto-renew, for every backend: which renewer serves a lock, and the locks
-- each store renews, so that what the renewers learn reaches the lock at the
-- next call into it or into its store (a loss becomes on_lost there, in the
-- caller's Lua, never in a timer, a thread or a finalizer).
--
-- Inside nginx a lock is renewed by a chain of ngx.timer callbacks
-- (timer_renewer.lua); elsewhere by its store's renewal thread (csrc/renew.c
-- running renew_worker.lua in a lua_State of its own), one thread per store
-- for all its locks. Both write the lease with lease.renew and offer the lock
-- the same two calls:
--   state() -> index, lease end (monotonic), lost, reason|nil, renewals
--   stop()  -> the same, once no renewal is being written any more
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"
local observe = require "cmpxchg.observe"
local runtime = require "cmpxchg.runtime"

local renewal = {}

--- The lease options the renewers read (and nothing that cannot cross to
-- another Lua state).
local function lease_options(o)
    return { ttl = o.ttl, clock_skew = o.clock_skew, expires_field = o.expires_field,
             expires_grace = o.expires_grace }
end

--- true when locks of store `st` can be renewed; else false and why.
function renewal.available(st)
    if runtime.nginx then return true end
    if st.backend.private then
        return false, "its data cannot be reached from another connection ("
            .. st.backend:describe() .. ")"
    end
    return true
end

--- A store's renewal state, made on first use: the locks it renews (weak:
-- a lock nobody references any more stops renewing) and its thread.
local function state_of(st)
    local s = st.renewal
    if s == nil then
        s = { locks = setmetatable({}, { __mode = "k" }) }
        st.renewal = s
    end
    return s
end

local function thread_renewer(st, l)
    local s = state_of(st)
    if s.thread == nil then
        s.thread = core.renewer_start(assert(json.encode({ target = st.origin.target,
            options = st.origin.options })))
    end
    local settings = assert(json.encode({ key = l.key, owner = l.owner,
        options = lease_options(l.options) }))
    return s.thread:add(settings, l.index, l.valid_mono, l.options.ttl / 3)
end

local function timer_renewer(st, l)
    return require("cmpxchg.timer_renewer").start(st, {
        key = l.key, owner = l.owner, options = lease_options(l.options),
        index = l.index, valid = l.valid_mono, renewals = 0,
    }, l)
end

--- Starts renewing lock `l`; apply(l, index, valid, lost, reason) is how
-- what the renewer learns is handed to the lock.
function renewal.start(l, apply)
    local st = l.store
    l.renewer = runtime.nginx and timer_renewer(st, l) or thread_renewer(st, l)
    state_of(st).locks[l] = apply
end

local function forget(l)
    local s = l.store.renewal
    if s then s.locks[l] = nil end
    l.renewer = nil
end

--- Counts the renewals renewer `r` made since the lock last heard (the
-- lock's `renewals` field) and tells the observers.
local function count_renewals(l, r, index, renewals)
    if type(renewals) ~= "number" then return end
    if l.renewals_of ~= r then l.renewals_of, l.renewals_seen = r, 0 end
    local new = renewals - l.renewals_seen
    if new <= 0 then return end
    l.renewals_seen = renewals
    l.renewals = (l.renewals or 0) + new
    if observe.active then
        observe.emit("renew", { key = l.key, kind = l.kind or "lock", token = index,
                                renewals = l.renewals, new = new })
    end
end

--- Hands lock `l` what its renewer learned; a lost lease ends the renewal.
function renewal.sync(l)
    local r = l.renewer
    if r == nil then return end
    local index, valid, lost, reason, renewals = r:state()
    local s = l.store.renewal
    local apply = s and s.locks[l]
    if lost then
        r:stop()
        forget(l)
    end
    count_renewals(l, r, index, renewals)
    if apply then apply(l, index, valid, lost, reason) end
end

--- Stops renewing `l`, waiting for a renewal being written, and hands the
-- lock the final state.
function renewal.stop(l)
    local r = l.renewer
    if r == nil then return end
    local s = l.store.renewal
    local apply = s and s.locks[l]
    local index, valid, lost, reason, renewals = r:stop()
    forget(l)
    count_renewals(l, r, index, renewals)
    if apply then apply(l, index, valid, lost, reason) end
end

--- What every renewer of store `st` learned, handed to its locks: run at
-- each call into the store.
function renewal.deliver(st)
    local s = st.renewal
    if s == nil or next(s.locks) == nil then return end
    local locks = {}
    for l in pairs(s.locks) do locks[#locks + 1] = l end
    for _, l in ipairs(locks) do renewal.sync(l) end
end

--- Stops every renewal of store `st` and its thread (store:close).
function renewal.stop_all(st)
    local s = st.renewal
    if s == nil then return end
    local locks = {}
    for l in pairs(s.locks) do locks[#locks + 1] = l end
    for _, l in ipairs(locks) do renewal.stop(l) end
    if s.thread then s.thread:close() end
    st.renewal = nil
end

return renewal
