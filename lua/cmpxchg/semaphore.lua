--- Semaphores: at most N holders of a name at once, on every backend.
--
-- The N permits are N locks: the keys `<name>/permits/1` .. `<name>/permits/N`.
-- A permit is taken exactly as store:lock takes a key (put with index 0, or
-- take over an expired lease by compare-and-set on its index), so every
-- property of a lock holds for each permit: at most one valid lease per
-- key, a dead holder's permit taken over once its lease is over, a fencing
-- token (the index) that only grows, release, extend, auto_renew, on_lost,
-- `<close>`. N keys, one valid lease each: never more than N valid permits,
-- whatever fails, with no counter to keep in step.
--
-- A waiter reads all N keys in one request (get_many: one snapshot), tries
-- the permits whose lease is over (a dead holder's are reclaimed first), then
-- the absent ones, each kind in a random order so that waiters spread over
-- them, and otherwise waits (backoff with full jitter, no later than just
-- after the first lease it saw ends) and reads again. With `fair = true` the
-- waiters queue as fair locks do (queue.lua), under `<name>/waiters/`, and a
-- waiter tries only while fewer live waiters are ahead of it than there are
-- free permits.
--
-- Every user of a name must give the same N: with different ones, the
-- largest bounds the holders.
local check = require "cmpxchg.check"
local lease = require "cmpxchg.lease"
local lock = require "cmpxchg.lock"
local observe = require "cmpxchg.observe"
local queue = require "cmpxchg.queue"
local runtime = require "cmpxchg.runtime"
local store = require "cmpxchg.store"
local wait = require "cmpxchg.wait"

local argerror = check.argerror
local AMBIGUOUS = lease.AMBIGUOUS

local MAX_PERMITS = 256         -- one get_many reads them all: keep it one request or two

local Semaphore = {}
local semaphore_mt = { __name = "cmpxchg.Semaphore", __index = Semaphore }

local semaphore = { metatable = semaphore_mt, MAX_PERMITS = MAX_PERMITS }

--- The key of permit `i` of semaphore `name`.
local function permit_key(name, i)
    return ("%s/permits/%d"):format(name, i)
end
semaphore.permit_key = permit_key

--- sem = store:semaphore(name, n [, opts])
function semaphore.new(st, name, n, opts)
    store.enter(st, "semaphore")
    check.key(name, 1, "semaphore")
    if type(n) ~= "number" or n ~= math.floor(n) or n < 1 or n > MAX_PERMITS then
        argerror(2, "semaphore", ("n must be an integer from 1 to %d, got %s")
            :format(MAX_PERMITS, tostring(n)))
    end
    n = check.tointeger(n) or n
    local problem = check.key_problem(permit_key(name, n))
    if problem then argerror(1, "semaphore", "name too long for its permit keys: " .. problem) end
    lock.options(opts, 3, "semaphore")      -- checked now, not at the first acquire
    local copy = {}
    for k, v in pairs(opts or {}) do copy[k] = v end
    local keys = {}
    for i = 1, n do keys[i] = permit_key(name, i) end
    return setmetatable({ store = st, name = name, n = n, options = copy,
                          keys = keys }, semaphore_mt)
end

local function to_semaphore(self, fname)
    if getmetatable(self) ~= semaphore_mt then
        argerror(1, fname, "cmpxchg.Semaphore expected, got " .. check.typename(self))
    end
    return self
end

--- The semaphore's options with a call's overrides on top.
local function merged(self, overrides, n, fname)
    if overrides == nil then return self.options end
    check.type(overrides, "table", n, fname)
    local o = {}
    for k, v in pairs(self.options) do o[k] = v end
    for k, v in pairs(overrides) do o[k] = v end
    return o
end

local function shuffle(list)
    for i = #list, 2, -1 do
        local j = math.floor(runtime.random() * i) + 1
        list[i], list[j] = list[j], list[i]
    end
    return list
end

--- Reads every permit: the free ones (in the order to try them: the
-- expired first, then the absent, each in a random order), the earliest end
-- of the others, the highest index seen; nil, err, code.
local function look(self, backend, o)
    local results, err, code = backend:get_many(self.keys)
    if results == nil then return nil, err, code end
    local now = runtime.time()
    local expired, absent, first_end, seen, holder = {}, {}, nil, 0, nil
    for i = 1, self.n do
        local r = results[i]
        seen = math.max(seen, r.index)
        local ends = r.index > 0 and lease.ends(r.value, o.expires_field)
        if r.index == 0 then
            absent[#absent + 1] = i
        elseif ends and now > ends + o.clock_skew then
            expired[#expired + 1] = i
        elseif ends then
            if first_end == nil or ends < first_end then first_end, holder = ends, r.value end
        end
        -- a value there that is no lease is nobody's permit to take: never free
    end
    -- a dead holder's permit is taken over first: its lease stops showing as
    -- held, and a holder that was only paused is fenced off the sooner
    local free = shuffle(expired)
    for _, i in ipairs(shuffle(absent)) do free[#free + 1] = i end
    return free, first_end, seen, holder
end

--- permit, err, code [, stats] = sem:acquire([opts])
function Semaphore:acquire(overrides)
    to_semaphore(self, "acquire")
    local st = self.store
    local backend = store.enter(st, "acquire")
    local opts = merged(self, overrides, 1, "acquire")
    local o = lock.options(opts, 1, "acquire")
    if o.timeout > 0 then runtime.check_yield("semaphore:acquire with a timeout") end
    if o.auto_renew then
        local ok, why = require("cmpxchg.renewal").available(st)
        if not ok then argerror(1, "acquire", "auto_renew is not available: " .. why) end
    end
    local owner = o.owner or runtime.uuid()
    local try = queue.try_options(opts, owner)
    local q = o.fair and queue.new(st, self.name .. queue.SUFFIX, o, owner) or nil
    local start = runtime.monotime()
    local deadline = start + o.timeout
    local stats = { attempts = 0, writes = 0, waited = 0, takeovers = 0 }
    local step = o.backoff_min
    local failure, failure_code, holder
    local first = true

    local waiter                -- what it waits through (wait.lua), from its first wait on
    local function done(l, err, code)
        if waiter then waiter:close() end
        if q then
            q:leave()
            stats.writes = stats.writes + (q.writes or 0)
        end
        stats.waited = runtime.monotime() - start
        if l then
            l.kind = "permit"
            l.attempts, l.writes, l.takeovers = stats.attempts, stats.writes, stats.takeovers
            l.waited, l.contended = stats.waited, stats.contended
        end
        if observe.active then
            lock.report("permit", self.name, o.fair, l, err, code, stats)
        end
        if l then return l end
        return nil, err, code, stats
    end

    while true do
        failure, failure_code = nil, nil
        local free, first_end, seen, who = look(self, backend, o)
        stats.attempts = stats.attempts + 1
        if free == nil then
            if not AMBIGUOUS[seen] then return done(nil, first_end, seen) end
            failure, failure_code, first_end, seen = first_end, seen, nil, 0
            free = {}
        end
        holder = who or holder
        if #free < self.n then stats.contended = true end
        local go = #free > 0
        if not go and q and not first and failure == nil then
            -- queued from the first wait on, so that the order is the arrival's
            local ok, err, code = q:keep()
            if ok == nil then
                if not AMBIGUOUS[code] then return done(nil, err, code) end
                failure, failure_code = err, code
            end
        elseif go and q then
            local err, code
            if first and o.timeout == 0 then
                -- try once: only when nobody is queued
                local n
                n, err, code = q:count_ahead()
                go = n ~= nil and n < #free
            else
                go, err, code = q:turn(#free)
            end
            stats.attempts = stats.attempts + 1
            if go == nil then
                if not AMBIGUOUS[code] then return done(nil, err, code) end
                failure, failure_code = err, code
            end
        end
        first = false
        if go then
            for _, i in ipairs(free) do
                local l, err, code, s = lock.take(st, self.keys[i], try)
                local got = l or s or {}
                stats.attempts = stats.attempts + (got.attempts or 0)
                stats.writes = stats.writes + (got.writes or 0)
                stats.takeovers = stats.takeovers + (got.takeovers or 0)
                if l then
                    l.slot, l.semaphore = i, self.name
                    return done(l)
                elseif code ~= "timeout" then       -- not a lost race
                    if not AMBIGUOUS[code] then return done(nil, err, code) end
                    failure, failure_code = err, code
                    break
                end
            end
        end
        local left = deadline - runtime.monotime()
        if o.timeout == 0 or left <= 0 then
            if failure then return done(nil, failure, failure_code) end
            return done(nil, ("timeout: semaphore '%s' has no free permit of %d (the first to "
                .. "end is held by %s; %d %s in %.3f s)"):format(self.name, self.n,
                    holder and lease.describe_holder(holder, o.expires_field) or "nobody now",
                    stats.attempts, stats.attempts == 1 and "attempt" or "attempts",
                    runtime.monotime() - start), "timeout")
        end
        local pause
        pause, step = store.backoff(step, o.backoff_min, o.backoff_max)
        if first_end then
            pause = math.min(pause, math.max(first_end + o.clock_skew - runtime.time(), 0) + 0.001)
        end
        if q then pause = math.min(pause, q:due(), queue.pause_cap(q, o)) end
        waiter = waiter or wait.new(st, { prefix = self.name .. "/permits/" },
            q and "fair_permits" or "permits", o, owner)
        waiter:change(seen, math.min(pause, left), q and math.min(left, q:due()) or left,
            first_end)
    end
end

local unpack = table.unpack or unpack     -- luacheck: ignore 143

local function pack(...)
    return { n = select("#", ...), ... }
end

--- ok, ... = sem:with_permit(opts, fn, ...): runs fn(...) holding a permit
-- and releases it, also when fn raises (the error is re-raised as is).
function Semaphore:with_permit(opts, fn, ...)
    to_semaphore(self, "with_permit")
    check.type(fn, "function", 2, "with_permit")
    local permit, err, code = self:acquire(opts)
    if not permit then return nil, err, code end
    local results = pack(pcall(fn, ...))
    local ok, rerr, rcode = permit:release()
    if not results[1] then error(results[2], 0) end
    if ok == false then
        return nil, ("lost: permit %d of semaphore '%s' was taken over while held")
            :format(permit.slot, self.name), "lost"
    elseif ok == nil then
        return nil, rerr, rcode
    end
    return true, unpack(results, 2, results.n)
end

--- holders, err, code = sem:holders(): the valid permits now, by permit
-- number: {slot =, key =, token =, owner =, host =, pid =, expires_at =}.
function Semaphore:holders()
    to_semaphore(self, "holders")
    local backend = store.enter(self.store, "holders")
    local o = lock.options(self.options, 1, "holders")
    local results, err, code = backend:get_many(self.keys)
    if results == nil then return nil, err, code end
    local now, out = runtime.time(), {}
    for i = 1, self.n do
        local r = results[i]
        local ends = r.index > 0 and lease.ends(r.value, o.expires_field)
        if ends and now <= ends + o.clock_skew then
            local v = r.value
            out[#out + 1] = { slot = i, key = self.keys[i], token = r.index,
                owner = type(v.Owner) == "string" and v.Owner or nil,
                host = type(v.Host) == "string" and v.Host or nil,
                pid = type(v.Pid) == "number" and (check.tointeger(v.Pid) or v.Pid) or nil,
                expires_at = ends }
        end
    end
    return out
end

semaphore_mt.__tostring = function(self)
    return ("cmpxchg.Semaphore (%s, %d permits)"):format(self.name, self.n)
end

return semaphore
