--- Leader election on an auto-renewed lease, on every backend.
--
-- The leadership of `name` is a lock on the key `name` whose owner is the
-- candidate's id: campaign takes it (waiting as store:lock waits, polling no
-- more often than backoff_max and waking just after the leader's lease would
-- end), keeps it renewed every ttl/3 (the renewal thread, or ngx.timer
-- chains inside nginx), and a leader that dies stops renewing, so the next
-- candidate takes over at most a ttl after the leader's last renewal. Each
-- term has its own fencing token, the index of the write that won it:
-- strictly greater than every index of the terms before, renewals included.
-- Anyone can read who leads (leader()) without campaigning.
--
-- The key holds the usual lease value (ExpiresAt, Owner = the id, Host,
-- Pid): the operator view (cmpxchg.locks, bin/cmpxchg) shows leaders as
-- locks, and break_lock deposes one.
local check = require "cmpxchg.check"
local lease = require "cmpxchg.lease"
local lock = require "cmpxchg.lock"
local observe = require "cmpxchg.observe"
local renewal = require "cmpxchg.renewal"
local runtime = require "cmpxchg.runtime"
local store = require "cmpxchg.store"
local wait = require "cmpxchg.wait"

local argerror = check.argerror
local AMBIGUOUS = lease.AMBIGUOUS

local Election = {}
local election_mt = { __name = "cmpxchg.Election", __index = Election }

local election = { metatable = election_mt }

-- defaults that differ from a lock's: a shorter lease (it bounds a failover),
-- a campaign that waits until it wins, and waiters that poll at most once a
-- second (they also wake just after the leader's lease would end)
local DEFAULTS = { ttl = 10, timeout = math.huge, backoff_max = 1 }

-- the election's own options; the lock options it passes on
local OWN = { id = "string", on_elected = "function", on_lost = "function" }
local PASSED = { ttl = true, timeout = true, backoff_min = true, backoff_max = true,
                 clock_skew = true, expires_field = true, expires_grace = true }

--- The checked options: the election's own, and the lock options of its
-- campaigns (lock.options' table, with auto_renew and the owner set).
function election.options(opts, n, fname)
    if opts ~= nil then check.type(opts, "table", n, fname) end
    opts = opts or {}
    local lock_opts = {}
    for k, v in pairs(DEFAULTS) do lock_opts[k] = v end
    for k, v in pairs(opts) do
        local want = OWN[k]
        if want then
            if type(v) ~= want then argerror(n, fname, ("%s must be a %s"):format(k, want)) end
        elseif PASSED[k] then
            lock_opts[k] = v
        else
            argerror(n, fname, "unknown option '" .. tostring(k) .. "'")
        end
    end
    if opts.id == "" then argerror(n, fname, "id must not be empty") end
    -- a backoff_min above the default backoff_max raises it (a lock's rule)
    if opts.backoff_max == nil and type(opts.backoff_min) == "number"
            and opts.backoff_min > lock_opts.backoff_max then
        lock_opts.backoff_max = opts.backoff_min
    end
    lock_opts.owner = opts.id
    lock_opts.auto_renew = true
    local o = lock.options(lock_opts, n, fname)     -- the numbers checked as a lock's
    return { id = opts.id, on_elected = opts.on_elected, on_lost = opts.on_lost,
             lock = lock_opts, checked = o }
end

--- e = store:election(name [, opts])
function election.new(st, name, opts)
    store.enter(st, "election")
    check.key(name, 1, "election")
    local e = election.options(opts, 2, "election")
    e.id = e.id or runtime.uuid()
    e.lock.owner = e.id
    e.store, e.name = st, name
    return setmetatable(e, election_mt)
end

local function to_election(self, fname)
    if getmetatable(self) ~= election_mt then
        argerror(1, fname, "cmpxchg.Election expected, got " .. check.typename(self))
    end
    return self
end

--- The lock's on_lost: the leadership ends with it.
local function lost_hook(self)
    return function(l, why)
        if self.leading ~= l then return end
        self.term = nil
        if self.on_lost then self.on_lost(self, why) end
    end
end

--- The campaign won with lock `l`.
local function elected(self, l)
    self.leading, self.term = l, l:token()
    self.seen_until = nil
    if observe.active then
        lock.report("leader", self.name, false, l)
        observe.emit("elected", { key = self.name, kind = "leader", token = self.term,
                                  id = self.id })
    end
    if self.on_elected then self.on_elected(self, self.term) end
    return true
end

--- ok, err, code = e:campaign([timeout]): true once this candidate leads
-- (at once when it already does); nil, "timeout: ...", "timeout" when the
-- time ran out; nil, err, code on a store failure. While someone leads, a
-- candidate reads the key (backoff with full jitter up to backoff_max, and
-- just after the lease it saw would end) and writes only when that lease is
-- gone or over: followers that wait for ever cost reads, never writes.
function Election:campaign(timeout)
    to_election(self, "campaign")
    local st = self.store
    local backend = store.enter(st, "campaign")
    if timeout ~= nil then check.seconds(timeout, "timeout", 1, "campaign", true) end
    if self:is_leader() then return true end
    local ok, why = renewal.available(st)
    if not ok then argerror(1, "campaign", "the leadership cannot be renewed: " .. why) end
    local o = self.checked
    timeout = timeout or o.timeout
    if timeout > 0 then runtime.check_yield("election:campaign with a timeout") end
    local opts = {}
    for k, v in pairs(self.lock) do opts[k] = v end
    opts.timeout = 0
    opts.on_lost = lost_hook(self)
    local start = runtime.monotime()
    local deadline = start + timeout
    local step = o.backoff_min
    local stats = { attempts = 0, writes = 0, takeovers = 0, waited = 0 }
    local err, code, holder
    local waiter                -- what it waits through (wait.lua), from its first wait on
    local function failed()
        if waiter then waiter:close() end
        stats.waited = runtime.monotime() - start
        if observe.active then lock.report("leader", self.name, false, nil, err, code, stats) end
        return nil, err, code
    end
    while true do
        local index, value, rcode = backend:get(self.name)
        stats.attempts = stats.attempts + 1
        local ends
        if index == nil then
            err, code = value, rcode
            if not AMBIGUOUS[code] then return failed() end
        else
            ends = index > 0 and lease.ends(value, o.expires_field) or nil
            self.seen_until, holder = ends, value
            err, code = nil, nil
            if index == 0 or (ends and runtime.time() > ends + o.clock_skew) then
                local l, s
                l, err, code, s = lock.take(st, self.name, opts)
                stats.attempts = stats.attempts + (l or s).attempts
                stats.writes = stats.writes + (l or s).writes
                stats.takeovers = stats.takeovers + (l or s).takeovers
                if l then
                    l.kind = "leader"
                    l.attempts, l.writes, l.takeovers = stats.attempts, stats.writes,
                        stats.takeovers
                    l.waited = runtime.monotime() - start
                    l.contended = index > 0 or stats.attempts > 2 or nil
                    if waiter then waiter:close() end
                    return elected(self, l)
                elseif code ~= "timeout" and not AMBIGUOUS[code] then
                    return failed()
                end
                local _, now_value = backend:get(self.name)  -- who won
                holder = now_value
                ends = lease.ends(now_value, o.expires_field)
                self.seen_until = ends
            end
        end
        local left = deadline - runtime.monotime()
        if timeout == 0 or left <= 0 then
            if err == nil or code == "timeout" then
                err, code = ("timeout: election '%s' is led by %s"):format(self.name,
                    holder and lease.describe_holder(holder, o.expires_field) or "nobody now"),
                    "timeout"
            end
            return failed()
        end
        local pause
        pause, step = store.backoff(step, o.backoff_min, o.backoff_max)
        if ends then
            pause = math.min(pause, math.max(ends + o.clock_skew - runtime.time(), 0) + 0.001)
        end
        waiter = waiter or wait.new(st, self.name, "leader", o, self.id)
        waiter:change(index or 0, math.min(pause, left), left, ends, holder)
    end
end

--- leading = e:is_leader(): whether this candidate leads now (its lease,
-- renewed in the background, still runs). A loss found by the renewals calls
-- on_lost here.
function Election:is_leader()
    to_election(self, "is_leader")
    local l = self.leading
    if l == nil then return false end
    if l:is_held() then return true end
    self.term = nil
    return false
end

--- token = e:token(): this term's fencing token while leading, else nil.
function Election:token()
    to_election(self, "token")
    if self:is_leader() then return self.term end
    return nil
end

--- ok, err, code = e:resign(): gives the leadership up (deletes the lease,
-- so the next candidate need not wait for it to end). true (also when not
-- leading); false, "lost" when it had been lost meanwhile; nil, err, code on
-- a store failure (still leading: it may be retried).
function Election:resign()
    to_election(self, "resign")
    local l = self.leading
    if l == nil then return true end
    local term = self.term
    local ok, err, code = l:release()
    if ok == nil then return nil, err, code end
    self.leading, self.term = nil, nil
    if ok and observe.active then
        observe.emit("resigned", { key = self.name, kind = "leader", token = term, id = self.id })
    end
    if ok then return true end
    return false, "lost"
end

--- id, info = e:leader(): who leads now, from any process: the leader's
-- id and {token =, host =, pid =, expires_at =}; false when nobody does (no
-- lease, or its time is over); nil, err, code on a store failure.
function Election:leader()
    to_election(self, "leader")
    local backend = store.enter(self.store, "leader")
    local index, value, code = backend:get(self.name)
    if index == nil then return nil, value, code end
    local o = self.checked
    local ends = index > 0 and lease.ends(value, o.expires_field)
    if not ends or runtime.time() > ends + o.clock_skew then return false end
    local pid = value.Pid
    return type(value.Owner) == "string" and value.Owner or "?", {
        token = index, expires_at = ends,
        host = type(value.Host) == "string" and value.Host or nil,
        pid = type(pid) == "number" and (check.tointeger(pid) or pid) or nil,
    }
end

local unpack = table.unpack or unpack     -- luacheck: ignore 143

local function pack(...)
    return { n = select("#", ...), ... }
end

--- ok, ... = e:with_leadership(fn, ...): campaigns (with the election's
-- timeout), runs fn(...) as the leader and resigns, also when fn raises (the
-- error is re-raised as is). true and fn's results; nil, err, code when not
-- elected or when the leadership was found lost at the end ("lost").
function Election:with_leadership(fn, ...)
    to_election(self, "with_leadership")
    check.type(fn, "function", 1, "with_leadership")
    local ok, err, code = self:campaign()
    if not ok then return nil, err, code end
    local results = pack(pcall(fn, ...))
    local resigned, rerr, rcode = self:resign()
    if not results[1] then error(results[2], 0) end
    if resigned == false then
        return nil, ("lost: the leadership of '%s' was lost while leading"):format(self.name),
            "lost"
    elseif resigned == nil then
        return nil, rerr, rcode
    end
    return true, unpack(results, 2, results.n)
end

-- `local e <close> = store:election(name)`: resigns at the end of the scope
election_mt.__close = function(self) pcall(Election.resign, self) end

election_mt.__tostring = function(self)
    return ("cmpxchg.Election (%s, %s)"):format(self.name,
        self.leading and not self.leading.released and "leading" or "not leading")
end

return election
