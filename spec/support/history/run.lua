--- A history run: client processes (client.lua) do random operations on a
-- few keys of one store, each logging its own history (recorder.lua), while
-- the caller injects faults; then the linearizability checker decides the
-- merged history.
--
--   local fig = require("spec.support.history.run").with({target = ..., name = ...},
--       function(r) ... faults, aimed with r:writes_in_flight(), r:stop_mid_write(),
--                   r:progress(), recorded with r:fault() and r:landed() ... end)
--
-- ctx: name; target (what clients open: a file, or "URL[,URL...]#database");
-- clients (8); seconds (the planned length, 30: clients stop when told, once
-- the faults are done and this much time has passed; on their own 300 s
-- later);
-- think (ms, the most a client waits between operations: bounds the size of
-- the history, which the checker must search); keys ({"h/k1","h/k2","h/k3"});
-- client (the client script: client.lua, or txn_client.lua for transactions).
local checker = require "spec.support.history.checker"
local core = require "cmpxchg.core"
local helpers = require "spec.helpers"

local run = {}

-- the operations that write (a transaction's log line may name a put or a
-- delete of its own before "txn": either says it writes)
local WRITES = { put = true, delete = true, txn = true }
local Run = {}
Run.__index = Run

--- Follows one client's log: its complete lines since the last call, parsed
-- lightly (the event kind and the operation kind of calls).
local function follower(path)
    local pos, pending = 0, ""
    return function()
        local f = io.open(path, "r")
        if not f then return {} end
        f:seek("set", pos)
        local chunk = f:read("*a") or ""
        f:close()
        pos = pos + #chunk
        chunk = pending .. chunk
        local lines, last = {}, 1
        for line, stop in chunk:gmatch("([^\n]*)\n()") do
            lines[#lines + 1] = line
            last = stop
        end
        pending = chunk:sub(last)
        return lines
    end
end

local opened

function run.new(ctx)
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. helpers.shell_quote(dir)))
    local self = setmetatable({
        ctx = ctx, name = ctx.name, dir = dir, stopfile = dir .. "/stop",
        nclients = ctx.clients or 8, seconds = ctx.seconds or 30, think = ctx.think or 10,
        keys = ctx.keys or { "h/k1", "h/k2", "h/k3" },
        clients = {}, live = {}, logs = {}, next_id = 0, completions = 0,
        faults = {}, started = core.monotime(),
    }, Run)
    for _ = 1, self.nclients do self:spawn() end
    -- every client has its store open before anything is injected
    for _, c in ipairs(self.live) do opened(c) end
    return self
end

--- Waits until client `c` says its store is open (raises when it failed).
function opened(c)
    local line = c.handle:read("*l")
    if line ~= "opened" then
        error(("client %s did not open its store: %s\n%s"):format(c.proc, tostring(line),
            c.handle:read("*a") or ""))
    end
end

--- Starts one more client process; returns it.
function Run:spawn()
    self.next_id = self.next_id + 1
    local proc = "c" .. self.next_id
    local log = ("%s/%s.log"):format(self.dir, proc)
    -- a client stops at the stop file; on its own only long after, in case
    -- this process died without ending it (a busy machine slows the faults)
    local left = self.seconds + 300 - (core.monotime() - self.started)
    local handle = helpers.start(self.ctx.client or "spec/support/history/client.lua", {
        self.ctx.target, log, proc,
        self.stopfile, ("%.3f"):format(math.max(left, 5)), tostring(self.think),
        table.concat(self.keys, ",") })
    local line = handle:read("*l") or ""
    local pid = tonumber(line:match("^pid (%d+)$"))
    if not pid then
        error(("client %s did not start: %s\n%s"):format(proc, line, handle:read("*a") or ""))
    end
    local c = { proc = proc, pid = pid, handle = handle, log = log, next_lines = follower(log),
                last = nil, done = 0 }
    self.clients[#self.clients + 1] = c
    self.live[#self.live + 1] = c
    self.logs[#self.logs + 1] = log
    return c
end

--- Reads what the clients logged since the last poll.
function Run:poll()
    for _, c in ipairs(self.clients) do
        for _, line in ipairs(c.next_lines()) do
            local e = line:match('"e":"(%a+)"')
            if e == "call" then
                c.last = line:match('"f":"(%a+)"')
            else
                c.last = nil
                c.done = c.done + 1
                self.completions = self.completions + 1
            end
        end
    end
end

--- The operation kind `c` is in the middle of, by its log (nil: none).
function Run:mid_op(c)
    self:poll()
    return c.last
end

--- The live clients in the middle of a write (put or delete) now.
function Run:writing()
    self:poll()
    local out = {}
    for _, c in ipairs(self.live) do
        if WRITES[c.last] then out[#out + 1] = c end
    end
    return out
end

--- Waits until `n` more operations completed (of any client, any outcome).
function Run:progress(n, what)
    self:poll()
    local target = self.completions + n
    helpers.wait_until(function()
        self:poll()
        return self.completions >= target
    end, 120, ("%d operations to complete (%s)"):format(n, what or self.name))
end

--- Waits until at least `n` clients are in the middle of a write, so that a
-- fault injected now meets requests in flight.
function Run:writes_in_flight(n, what)
    return helpers.wait_until(function()
        local w = self:writing()
        return #w >= n and w
    end, 60, ("%d clients in the middle of a write (%s)"):format(n, what or self.name))
end

--- Waits until `at` seconds after the start (pacing of the fault plan: the
-- run's load, not anything a check depends on).
function Run:pace(at)
    local wait = self.started + at - core.monotime()
    if wait > 0 then core.sleep(wait) end
end

--- Notes a fault injected between `since` (a core.monotime(), default now)
-- and now; returns its record.
function Run:fault(kind, detail, since)
    local now = core.monotime()
    local f = { kind = kind, detail = detail, at = since or now, done_at = now }
    self.faults[#self.faults + 1] = f
    return f
end

local function remove(list, item)
    for i, x in ipairs(list) do
        if x == item then table.remove(list, i) return end
    end
end

--- SIGSTOPs a live client, waiting until it is stopped; returns it.
function Run:stop(c)
    helpers.kill(c.pid, "STOP")
    helpers.wait_until(function() return helpers.proc_state(c.pid) == "T" end, 10,
        "client " .. c.proc .. " to stop")
    c.stopped = true
    self:poll()                 -- what it logged up to its stop
end

function Run:resume(c)
    self:poll()
    helpers.kill(c.pid, "CONT")
    c.stopped = false
end

--- Stops live clients one at a time until one is caught in the middle of a
-- write (its log's last line is the call): returns it, stopped. The others
-- are resumed at once. Tries at most `tries` times.
function Run:stop_mid_write(tries)
    for _ = 1, tries or 2000 do
        local c = self.live[math.random(#self.live)]
        if not c.stopped then
            self:stop(c)
            local kind = self:mid_op(c)
            if WRITES[kind] then return c end
            self:resume(c)
            self:progress(1, "between tries")
        end
    end
    error("no client was caught in the middle of a write")
end

--- SIGKILLs a client (stopped or not) and waits for it; a new client takes
-- its place. Returns the client's last logged state (the operation it was
-- killed in, or nil).
function Run:kill(c)
    helpers.kill(c.pid, "KILL")
    c.handle:read("*a")
    helpers.pclose(c.handle)
    c.killed = true
    remove(self.live, c)
    local mid = self:mid_op(c)
    opened(self:spawn())
    return mid
end

--- Whether fault `f` met requests in flight: operations invoked before it
-- was done and completed after that, or never; sets f.met, their number.
-- Call it once the operations the fault met have had time to end (after
-- run:progress).
function Run:landed(f)
    local n = 0
    for _, op in ipairs((checker.read_logs(self.logs))) do
        if op.call < f.done_at and (op.ret or op.ended or math.huge) > f.done_at then
            n = n + 1
        end
    end
    f.met = n
    return n > 0
end

--- Stops the clients, waits for them, and checks the history. Returns the
-- figures: ops (checked), unknown (of unknown outcome), killed, errors,
-- dropped_reads, codes, faults ({kind, detail, landed, ...}), result (the
-- checker's), report (text), seconds (of operations), check_seconds,
-- clients (processes that ran).
function Run:finish()
    self:pace(self.seconds)
    self:progress(self.nclients * 5, "the last operations")
    for _, c in ipairs(self.live) do
        if c.stopped then self:resume(c) end
    end
    local f = assert(io.open(self.stopfile, "w"))
    f:close()
    local ended = core.monotime()
    local outputs = {}
    for _, c in ipairs(self.live) do
        local out = c.handle:read("*a")
        local ok = helpers.pclose(c.handle)
        if not ok or not out:find("done", 1, true) then
            outputs[#outputs + 1] = ("client %s failed:\n%s"):format(c.proc, out)
        end
    end
    assert(#outputs == 0, table.concat(outputs, "\n"))
    local ops, fig = checker.read_logs(self.logs)
    local t0 = os.clock()
    local result = checker.check(ops, { t0 = self.started })
    fig.check_seconds = os.clock() - t0
    fig.ops, fig.result, fig.faults = #ops, result, self.faults
    fig.seconds = ended - self.started
    fig.clients, fig.started = #self.clients, self.started
    fig.report = checker.report(result)
    if result.ok or not os.getenv("HISTORY_KEEP_LOGS") then
        os.execute("rm -r " .. helpers.shell_quote(self.dir))
    else
        fig.kept = self.dir         -- HISTORY_KEEP_LOGS=1: the logs of a failed run stay
    end
    return fig
end

--- Ends a run that failed: SIGKILLs its clients and removes its logs.
function Run:abort()
    for _, c in ipairs(self.live) do
        helpers.kill(c.pid, "KILL")
        helpers.pclose(c.handle)
    end
    self.live = {}
    os.execute("rm -r " .. helpers.shell_quote(self.dir))
end

--- Runs clients on ctx (see run.new) while plan(run) injects the faults;
-- returns the figures of run:finish(). An error of the plan ends the clients
-- and propagates.
function run.with(ctx, plan)
    local r = run.new(ctx)
    local ok, err = pcall(plan, r)
    if not ok then
        r:abort()
        error(err, 0)
    end
    return r:finish()
end

--- The figures in words, for the test's output.
function run.summary(name, fig)
    local lines = { ("history run %s: %d operations checked over %.1f s by %d client processes, "
        .. "%d of unknown outcome (%d clients killed mid-call), %d definite errors left out, "
        .. "%d failed reads; checked in %.1f s: %s"):format(name, fig.ops, fig.seconds,
        fig.clients, fig.unknown, fig.killed, fig.errors, fig.dropped_reads, fig.check_seconds,
        fig.result.ok and "linearizable" or "NOT LINEARIZABLE") }
    local codes = {}
    for code, n in pairs(fig.codes) do codes[#codes + 1] = ("%s %d"):format(code, n) end
    table.sort(codes)
    if #codes > 0 then lines[#lines + 1] = "  error codes: " .. table.concat(codes, ", ") end
    for _, code in ipairs(codes) do
        code = code:match("^%S+")
        lines[#lines + 1] = ("    %s, e.g.: %s"):format(code, tostring(fig.samples[code]))
    end
    lines[#lines + 1] = ("  %d faults injected:"):format(#fig.faults)
    for _, f in ipairs(fig.faults) do
        lines[#lines + 1] = ("    at %5.1f s: %s %s%s"):format(f.at - fig.started, f.kind,
            f.detail or "", f.met and (" (met %d operations in flight)"):format(f.met) or "")
    end
    lines[#lines + 1] = fig.report:gsub("^", "  "):gsub("\n", "\n  ")
    if fig.kept then lines[#lines + 1] = "  the clients' logs: " .. fig.kept end
    return table.concat(lines, "\n") .. "\n"
end

return run
