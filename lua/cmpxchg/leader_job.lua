--- Inside nginx: a recurring job that runs on one worker of the whole
-- cluster, whichever leads, and moves when that worker or its host dies
-- (the answer to lua-nginx-module#1210, "run this ngx.timer job once").
--
-- Every worker of every host calls cmpxchg.leader_job once (from
-- init_worker_by_lua*); each then runs a chain of ngx.timer callbacks, one
-- timer at a time, around an election (election.lua) of its own:
--   follower  looks at the leadership (one read) every `retry` seconds, and
--             just after the leader's lease would end; takes it when that
--             lease is over
--   leader    runs fn every `every` seconds, and checks every ttl/3 that it
--             still leads (its lease is renewed by a timer chain of its own)
-- A leader that dies stops renewing; the first follower to look after its
-- lease ended takes over, at most ttl (plus a look) after the last renewal.
-- A worker that exits (nginx -s quit, reload) resigns, so the next leader
-- need not wait.
local check = require "cmpxchg.check"
local election = require "cmpxchg.election"
local runtime = require "cmpxchg.runtime"

local argerror = check.argerror

local ngx = rawget(_G, "ngx")

local Job = {}
local job_mt = { __name = "cmpxchg.LeaderJob", __index = Job }

local leader_job = { metatable = job_mt }

local OWN = { store = true, every = true, retry = true }

local tick      -- the timer callback, below

local function log(level, fmt, ...)
    ngx.log(level, ("cmpxchg.leader_job: " .. fmt):format(...))
end

local function schedule(self, delay)
    local ok, err = ngx.timer.at(math.max(delay, 0), tick, self)
    if not ok then
        -- only when the worker exits or timers are exhausted: nothing to retry with
        log(ngx.ERR, "'%s': cannot schedule its timer: %s", self.name, tostring(err))
        self.stopped = true
    end
end

--- The store, opened on first use when given as a function.
local function store_ready(self)
    if self.store then return self.store end
    local st, err = self.open()
    if not st then
        log(ngx.WARN, "'%s': cannot open the store: %s", self.name, tostring(err))
        return nil
    end
    self.store = st
    return st
end

--- One turn; returns the seconds until the next one.
local function step(self)
    local st = store_ready(self)
    if not st then return self.retry end
    local e = self.election
    if e == nil then
        e = election.new(st, self.name, self.eopts)
        self.election = e
    end
    if e:is_leader() then
        local now = runtime.monotime()
        if now >= self.next_run then
            self.next_run = now + self.every
            self.runs = self.runs + 1
            local ok, err = pcall(self.fn, e)
            if not ok then log(ngx.ERR, "'%s': the job raised: %s", self.name, tostring(err)) end
        end
        if not e:is_leader() then return 0 end
        return math.min(math.max(self.next_run - runtime.monotime(), 0), self.check)
    end
    local ok, err, code = e:campaign(0)
    if ok then
        self.next_run = runtime.monotime()      -- the first run at once
        return 0
    end
    if code ~= "timeout" then
        log(ngx.WARN, "'%s': cannot campaign: %s", self.name, tostring(err))
    end
    local delay = self.retry
    if e.seen_until then        -- just after the leader's lease would end
        delay = math.min(delay, math.max(e.seen_until + e.checked.clock_skew - runtime.time(),
            0) + 0.001)
    end
    return delay
end

--- Resigns when leading (the worker exits, or stop()).
local function step_down(self)
    local e = self.election
    if e and e.leading then
        local ok, err = pcall(e.resign, e)
        if not ok then log(ngx.WARN, "'%s': resign failed: %s", self.name, tostring(err)) end
    end
end

tick = function(premature, self)
    if premature or self.stopped then
        if not self.resigned then
            self.resigned = true
            step_down(self)
        end
        return
    end
    local ok, delay = pcall(step, self)
    if not ok then
        log(ngx.ERR, "'%s': %s", self.name, tostring(delay))
        delay = self.retry
    end
    if self.stopped then
        self.resigned = true
        step_down(self)
    else
        schedule(self, delay)
    end
end

--- job = cmpxchg.leader_job(name, opts, fn)
function leader_job.start(name, opts, fn)
    if not runtime.nginx then
        check.raise("cmpxchg.leader_job runs inside nginx (a chain of ngx.timer callbacks); "
            .. "in plain Lua, call election:campaign() in a loop of your own")
    end
    check.key(name, 1, "leader_job")
    check.type(opts, "table", 2, "leader_job")
    check.type(fn, "function", 3, "leader_job")
    local st, open = opts.store, nil
    if type(st) == "function" then
        st, open = nil, opts.store
    elseif getmetatable(st) ~= require("cmpxchg.store").metatable then
        argerror(2, "leader_job", "store must be a store or a function that opens one")
    end
    local every = opts.every
    if type(every) ~= "number" or every ~= every or every <= 0 or every == math.huge then
        argerror(2, "leader_job", "every must be a positive number of seconds")
    end
    if opts.timeout ~= nil then
        argerror(2, "leader_job", "timeout is not an option here: followers never wait")
    end
    local eopts = {}
    for k, v in pairs(opts) do
        if not OWN[k] then eopts[k] = v end
    end
    local checked = election.options(eopts, 2, "leader_job").checked
    local retry = opts.retry or checked.ttl / 3
    check.seconds(retry, "retry", 2, "leader_job")
    if retry <= 0 then argerror(2, "leader_job", "retry must be positive") end
    local self = setmetatable({
        name = name, fn = fn, store = st, open = open, eopts = eopts, every = every,
        retry = retry, check = checked.ttl / 3, next_run = 0, runs = 0,
        stopped = false, resigned = false,
    }, job_mt)
    schedule(self, 0)
    return self
end

local function to_job(self, fname)
    if getmetatable(self) ~= job_mt then
        argerror(1, fname, "cmpxchg.LeaderJob expected, got " .. check.typename(self))
    end
    return self
end

--- leading = job:is_leader(): whether this worker runs the job now.
function Job:is_leader()
    to_job(self, "is_leader")
    return self.election ~= nil and self.election:is_leader()
end

--- job:stop() -> true: this worker no longer campaigns nor runs the job; it
-- resigns (at its next timer) when it leads.
function Job:stop()
    to_job(self, "stop")
    self.stopped = true
    return true
end

job_mt.__tostring = function(self)
    return ("cmpxchg.LeaderJob (%s, %s, %d runs)"):format(self.name,
        self:is_leader() and "leading" or "following", self.runs)
end

return leader_job
