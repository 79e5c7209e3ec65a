--- The lock torture test, for any backend:
--   local figures = require("spec.support.torture").run(ctx)
-- Runs ctx.workers (8) worker processes (spec/support/torture_worker.lua) that
-- take one lock ctx.rounds (40) times each with a short lease (ctx.ttl, 1 s) and
-- make a fenced write to a protected resource in every critical section. Meanwhile
-- this process follows their shared log and, at points spread over the run,
-- SIGSTOPs every worker at once, reads from the log which of them is inside its
-- critical section (for a stop: before its write), and either SIGKILLs that one (a
-- replacement takes on the rounds it had left) or keeps it stopped until its lease
-- has run out and a newer holder has written, then SIGCONTs it, so that its late
-- write comes; the others go on. Aimed by what the log shows, not by timing: a try
-- that finds no holder inside changes nothing and is made again, until every
-- planned event has hit (within a bound), however slow the machine.
--
-- ctx: name; target (the string workers open: a file, or "URL[,URL...]#database");
-- open() -> a store on the same target, for the final checks and the clean-up;
-- optional permits: the workers take permits of a semaphore of that many instead
-- of the lock (a permit's token fences a resource of that permit's own), and the
-- valid leases may then overlap up to `permits` at once, never more;
-- optional fair (true: the workers take the lock with fair = true, so that kills,
-- stops and takeovers also hit its queue of waiters); optional workers, rounds,
-- ttl, kills, stops (mid-section kills and stops to make, 4 each), deadline
-- (seconds, 150), keep_log (true: the shared log stays,
-- its path in the figures' log); disturb(), called once when a third of
-- the sections are done (the etcd leader kill): it may return a function that is
-- called at the end to wait for the disturbance to be over, and may return what
-- happened, for the report.
--
-- Returns the figures: acquisitions, expected (workers * rounds), takeovers, kills
-- and stops (holders killed or kept stopped), kills_mid and stops_mid (those that
-- hit a holder mid-section: all of them), kills_reentered (kills whose lock or
-- permit was entered again later), planned and done_events (of those),
-- probes (freezes made to find them), disturbed_at (acquisitions then)
-- and disturbance (what disturb's function returned), overlaps (of valid leases),
-- order (sections whose token does not exceed the one before in time), accepted,
-- refused, stale_refused (late writes of stopped holders refused), stale_expected,
-- stale_accepted (accepted writes whose token is lower than one accepted before
-- them on the resource), bad_refusals (refusals no higher accepted token explains),
-- write_failures, lock_failures, lost (releases that did not return true),
-- failure_codes and lost_codes (how many of each code),
-- final_token, max_accepted, seconds, problems (what failed, in words); with
-- permits, max_holders (the most valid permits at one instant) and too_many
-- (instants with more than `permits`), and the per-permit checks above for
-- every permit (final_token is then the lowest of their final tokens).
--
-- A section's lease is valid from its enter line to the earlier of its leave line
-- and its lease end: a holder stopped past its lease no longer holds it, so its
-- late leave line is no overlap; but its late write must be refused.
local core = require "cmpxchg.core"
local helpers = require "spec.helpers"

local torture = {}

local LOCK_KEY, RESOURCE_KEY = "torture/lock", "torture/resource"

--- Follows an append-only log file: returns a function that hands out the
-- complete lines added since its last call (a line being written is left for
-- the next call).
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

local proc_state = helpers.proc_state

--- Whether `pid` is (still) one of our workers, not a process that got its pid.
local function is_worker(pid)
    local f = io.open("/proc/" .. pid .. "/cmdline", "r")
    if not f then return false end
    local cmdline = f:read("*a")
    f:close()
    return cmdline:find("torture_worker.lua", 1, true) ~= nil
end

--- Sends `sig` to every pid of the list at once (one kill(1)).
local function signal(pids, sig)
    return os.execute(("kill -%s %s 2>/dev/null"):format(sig, table.concat(pids, " ")))
end

local function shuffle(list)
    for i = #list, 2, -1 do
        local j = math.random(i)
        list[i], list[j] = list[j], list[i]
    end
    return list
end

local function run(ctx, workers)
    local nworkers, rounds, ttl = ctx.workers or 8, ctx.rounds or 40, ctx.ttl or 1
    local total = nworkers * rounds
    local started_at = core.monotime()
    local deadline = started_at + (ctx.deadline or 150)
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. helpers.shell_quote(dir)))
    local logfile = dir .. "/log"
    local next_lines = follower(logfile)

    local fig = { acquisitions = 0, expected = total, takeovers = 0, kills = 0, stops = 0,
        overlaps = 0, order = 0, accepted = 0, refused = 0, stale_refused = 0,
        stale_expected = 0, stale_accepted = 0, bad_refusals = 0, write_failures = 0,
        lock_failures = 0, lost = 0, kills_mid = 0, stops_mid = 0,
        failure_codes = {}, lost_codes = {} }

    -- workers: by id {handle, rounds, pid, done, killed}; pid -> worker
    local by_pid, nextid = {}, 0
    local function spawn(n)
        nextid = nextid + 1
        local id = "w" .. nextid
        workers[id] = { id = id, rounds = n, entered = 0,
            handle = helpers.start("spec/support/torture_worker.lua", { ctx.target, LOCK_KEY,
                RESOURCE_KEY, logfile, tostring(n), tostring(ttl), id,
                ctx.permits and tostring(ctx.permits) or ctx.fair and "fair" or nil }) }
    end
    for _ = 1, nworkers do spawn(rounds) end

    local sections, order = {}, {}     -- by token; tokens in enter order
    local accepted, refused = {}, {}
    local problems = {}
    local function problem(fmt, ...) problems[#problems + 1] = fmt:format(...) end

    local function consume()
        for _, line in ipairs(next_lines()) do
            local kind, rest = line:match("^(%a+) ?(.*)$")
            local f = {}
            for w in rest:gmatch("%S+") do f[#f + 1] = w end
            if kind == "start" then
                local w = workers[f[1]]
                w.pid = tonumber(f[2])
                by_pid[w.pid] = w
            elseif kind == "enter" then
                local token = tonumber(f[1])
                local s = { token = token, pid = tonumber(f[2]), t0 = tonumber(f[3]),
                    lease_end = tonumber(f[4]), slot = tonumber(f[6]) or 0 }
                if sections[token] then problem("token %d entered twice", token) end
                sections[token] = s
                order[#order + 1] = s
                fig.acquisitions = fig.acquisitions + 1
                fig.takeovers = fig.takeovers + tonumber(f[5])
                local w = by_pid[s.pid]
                w.entered, w.section = w.entered + 1, s
            elseif kind == "write" then
                local s = sections[tonumber(f[1])]
                s.write = f[2]
                if f[2] == "accepted" then
                    fig.accepted = fig.accepted + 1
                    accepted[#accepted + 1] = { token = s.token, index = tonumber(f[3]),
                                                slot = s.slot }
                elseif f[2] == "refused" then
                    fig.refused = fig.refused + 1
                    refused[#refused + 1] = { token = s.token, slot = s.slot }
                else
                    fig.write_failures = fig.write_failures + 1
                end
            elseif kind == "leave" then
                sections[tonumber(f[1])].t1 = tonumber(f[3])
            elseif kind == "lost" then
                fig.lost = fig.lost + 1
                fig.lost_codes[f[3]] = (fig.lost_codes[f[3]] or 0) + 1
            elseif kind == "failed" then
                fig.lock_failures = fig.lock_failures + 1
                fig.failure_codes[f[2]] = (fig.failure_codes[f[2]] or 0) + 1
            elseif kind == "done" then
                by_pid[tonumber(f[1])].done = true
            elseif kind == "crash" then
                by_pid[tonumber(f[1])].done = true
                problem("worker %s crashed: %s", f[1], rest)
            else
                problem("unexpected log line: %s", line)
            end
        end
    end

    -- the disturbances: mid-section kills and stops at points spread over the run
    local plan = {}
    for _ = 1, ctx.kills or 4 do plan[#plan + 1] = "kill" end
    for _ = 1, ctx.stops or 4 do plan[#plan + 1] = "stop" end
    shuffle(plan)
    -- from a tenth of the run to 85% of it; with permits only to 60%: a stopped
    -- holder's permit is taken over (and its late write refused) only when
    -- work is left for others once its lease ended, and other permits do the
    -- rest of the work meanwhile
    local span = ctx.permits and 0.5 or 0.75
    local at = {}
    for j = 1, #plan do
        at[j] = math.floor(total * (0.1 + span * (j - 1) / math.max(#plan - 1, 1)))
    end
    local step, stopped = 1, nil
    fig.planned, fig.done_events, fig.probes = #plan, 0, 0
    -- a probe that finds no holder mid-section costs nothing but a pause of
    -- every worker: try as often as it takes, within this bound (and the deadline)
    local max_probes = 50 * #plan
    local disturbed, settle = false, nil
    local victims = {}       -- stopped sections whose late write is expected refused
    local killed = {}        -- sections whose holder was killed

    local function newer_write(token, slot)
        for i = #accepted, 1, -1 do
            if accepted[i].token > token and accepted[i].slot == slot then return true end
        end
        return false
    end

    local function finished()
        for _, w in pairs(workers) do
            if not (w.done or w.killed) then return false end
        end
        return true
    end

    --- Stops every running worker with one kill(1) and waits until each is
    -- stopped or gone. A stopped process has made all its write(2)s, so the log
    -- then says exactly where each one is, however late the signal came (a
    -- loaded machine, or the ASan runtime starting up in kill(1), takes longer
    -- than a whole section). Returns the workers stopped.
    local function freeze()
        local frozen, pids = {}, {}
        for _, w in pairs(workers) do
            if w.pid and not (w.done or w.killed) then
                frozen[#frozen + 1] = w
                pids[#pids + 1] = w.pid
            end
        end
        if #pids == 0 then return frozen end
        signal(pids, "STOP")
        helpers.wait_until(function()
            for _, pid in ipairs(pids) do
                local state = proc_state(pid)
                if state and state ~= "T" and state ~= "t" and state ~= "Z" then return false end
            end
            return true
        end, 30, "the workers to stop")
        consume()
        return frozen
    end

    --- One try at the next planned event: every worker is frozen, and one that the
    -- log shows inside a section (and, for a stop, before its write) is the
    -- victim; the others go on. Found none: nothing happened, and the next try
    -- comes at once.
    local function probe()
        fig.probes = fig.probes + 1
        local kind = plan[step]
        local frozen = freeze()
        local victim
        for _, w in ipairs(frozen) do
            local s = w.section
            -- never a section that an event hit already: a paused holder let go
            -- and still inside its section (its late write done) is no longer
            -- the holder, and killing it asks for no takeover of its own
            if not w.done and s and not s.t1 and not s.hit and (kind == "kill" or not s.write) then
                victim = w
            end
        end
        if victim then victim.section.hit = true end
        if victim and kind == "kill" then
            helpers.kill(victim.pid, "KILL")
            helpers.wait_until(function()
                local state = proc_state(victim.pid)
                return state == nil or state == "Z"
            end, 30, "worker " .. victim.pid .. " to die")
            fig.kills, fig.kills_mid = fig.kills + 1, fig.kills_mid + 1
            killed[#killed + 1] = victim.section
            victim.killed = true
            victim.output = victim.handle:read("*a")
            helpers.pclose(victim.handle)
            if victim.rounds > victim.entered then spawn(victim.rounds - victim.entered) end
        elseif victim then
            fig.stops, fig.stops_mid = fig.stops + 1, fig.stops_mid + 1
            stopped = { pid = victim.pid, section = victim.section }
        end
        local others = {}
        for _, w in ipairs(frozen) do
            if w ~= victim then others[#others + 1] = w.pid end
        end
        if #others > 0 then signal(others, "CONT") end
        if victim then
            step = step + 1
            fig.done_events = step - 1
        end
    end

    while not (finished() and not stopped) do
        if core.monotime() > deadline then
            error(("[%s] torture run did not finish in time: %d of %d sections")
                :format(ctx.name, fig.acquisitions, total))
        end
        consume()
        if ctx.disturb and not disturbed and fig.acquisitions >= math.floor(total / 3) then
            disturbed = true
            fig.disturbed_at = fig.acquisitions
            settle = ctx.disturb()
        end
        if stopped then
            -- let it go once its lease is over and a newer holder has written, or
            -- after a while in any case (a disturbed cluster may be slow)
            local now = core.time()
            local section = stopped.section
            if (now > section.lease_end + 0.05 and newer_write(section.token, section.slot))
                    or now > section.lease_end + ttl + 10 then
                if newer_write(section.token, section.slot) then
                    victims[#victims + 1] = stopped.section
                end
                helpers.kill(stopped.pid, "CONT")
                stopped = nil
            end
        elseif step <= #plan and fig.acquisitions >= at[step] and fig.probes < max_probes then
            -- aimed: the log shows a section begun and not left
            local last = order[#order]
            if last and not last.t1 then probe() end
        end
        core.sleep(0.003)
    end
    if ctx.disturb and not disturbed then problem("the run ended before its disturbance") end
    if settle then fig.disturbance = settle() end
    consume()

    -- every worker that was not killed finished cleanly
    for id, w in pairs(workers) do
        if not w.killed then
            local output = w.handle:read("*a")
            local ok, how, code = helpers.pclose(w.handle)
            w.done, w.killed = true, true       -- closed: nothing left to clean up
            if not ok then
                problem("worker %s (pid %s) ended %s %s: %s", id, tostring(w.pid), tostring(how),
                    tostring(code), output)
            end
        end
    end

    -- overlaps of valid leases of one lock (one permit), and tokens in time
    -- order; with permits, how many valid leases there are at once
    local valid, slots = {}, {}
    for _, s in ipairs(order) do
        local t1 = s.lease_end
        if s.t1 and s.t1 < t1 then t1 = s.t1 end
        if t1 > s.t0 then
            valid[#valid + 1] = { token = s.token, t0 = s.t0, t1 = t1, slot = s.slot }
        end
        slots[s.slot] = true
    end
    table.sort(valid, function(a, b) return a.t0 < b.t0 end)
    local reach, last_token = {}, {}
    for _, v in ipairs(valid) do
        if v.t0 < (reach[v.slot] or -math.huge) then
            fig.overlaps = fig.overlaps + 1
            problem("section %d overlaps a valid lease of %s by %.6f s", v.token,
                ctx.permits and "permit " .. v.slot or "the lock", reach[v.slot] - v.t0)
        end
        if v.token <= (last_token[v.slot] or -math.huge) then fig.order = fig.order + 1 end
        reach[v.slot] = math.max(reach[v.slot] or -math.huge, v.t1)
        last_token[v.slot] = v.token
    end
    if ctx.permits then
        local events = {}
        for _, v in ipairs(valid) do
            events[#events + 1] = { t = v.t0, d = 1 }
            events[#events + 1] = { t = v.t1, d = -1 }
        end
        table.sort(events, function(a, b)
            if a.t ~= b.t then return a.t < b.t end
            return a.d < b.d
        end)
        local inside = 0
        fig.max_holders, fig.too_many = 0, 0
        for _, e in ipairs(events) do
            inside = inside + e.d
            fig.max_holders = math.max(fig.max_holders, inside)
            if inside > ctx.permits then fig.too_many = fig.too_many + 1 end
        end
        if fig.too_many > 0 then
            problem("%d valid permits at once, of %d", fig.max_holders, ctx.permits)
        end
    end

    -- fencing: in the resource's own order (its indexes), accepted tokens never
    -- go down (one resource per permit)
    table.sort(accepted, function(a, b) return a.index < b.index end)
    local highest = {}
    fig.max_accepted = -math.huge
    for _, a in ipairs(accepted) do
        local h = highest[a.slot] or -math.huge
        if a.token < h then
            fig.stale_accepted = fig.stale_accepted + 1
            problem("write with token %d accepted after one with token %d", a.token, h)
        end
        highest[a.slot] = math.max(h, a.token)
        fig.max_accepted = math.max(fig.max_accepted, a.token)
    end
    for _, r in ipairs(refused) do
        if r.token >= (highest[r.slot] or -math.huge) then
            fig.bad_refusals = fig.bad_refusals + 1
            problem("write with token %d refused though no higher token was accepted", r.token)
        end
    end
    -- a killed holder's lease is taken over when its lock (or permit) is entered
    -- again; with permits, the others may have done the rest of the work by the
    -- time it ends, however soon the kill came (a busy machine's timing)
    fig.kills_reentered = 0
    for _, k in ipairs(killed) do
        for _, s in pairs(sections) do
            if s.slot == k.slot and s.token > k.token then
                fig.kills_reentered = fig.kills_reentered + 1
                break
            end
        end
    end
    for _, s in ipairs(victims) do
        fig.stale_expected = fig.stale_expected + 1
        if s.write == "refused" then fig.stale_refused = fig.stale_refused + 1 end
    end

    -- what each resource holds, then no stray keys
    local st = assert(ctx.open())
    for slot in pairs(slots) do
        local key = ctx.permits and RESOURCE_KEY .. "/" .. slot or RESOURCE_KEY
        local value, index = st:get(key)
        local final = type(value) == "table" and value.Token or nil
        if not final or final < (highest[slot] or -math.huge) then
            problem("resource %s holds token %s, below the highest accepted, %s", key,
                tostring(final), tostring(highest[slot]))
        end
        if final and (fig.final_token == nil or final < fig.final_token) then
            fig.final_token = final
        end
        if type(index) == "number" and index > 0 then st:delete(key, index) end
    end
    local _, lock_index = st:get(LOCK_KEY)
    if type(lock_index) == "number" and lock_index > 0 then st:delete(LOCK_KEY, lock_index) end
    for _, item in ipairs(st:list(LOCK_KEY .. "/") or {}) do st:delete(item.key, item.index) end
    st:close()
    if ctx.keep_log then fig.log = logfile else os.execute("rm -rf " .. helpers.shell_quote(dir)) end

    fig.seconds = core.monotime() - started_at
    fig.problems = problems
    return fig
end

--- Runs the test (see above); whatever happens, no worker is left behind, stopped
-- or running.
function torture.run(ctx)
    local workers = {}
    -- a closure: Lua 5.1 xpcall passes no arguments
    local ok, fig = xpcall(function() return run(ctx, workers) end, debug.traceback)
    for _, w in pairs(workers) do
        if not (w.done or w.killed) then
            if w.pid and is_worker(w.pid) then
                helpers.kill(w.pid, "KILL")
                helpers.kill(w.pid, "CONT")
            end
            helpers.pclose(w.handle)
        end
    end
    if not ok then error(fig, 0) end
    return fig
end

local function tally(codes)
    local parts = {}
    for code, n in pairs(codes) do parts[#parts + 1] = code .. " " .. n end
    table.sort(parts)
    return #parts > 0 and " (" .. table.concat(parts, ", ") .. ")" or ""
end

--- One line of figures, for stderr.
function torture.report(name, fig)
    return ("\n[%s] torture: %d acquisitions (of %d) in %.1f s, %d takeovers, %d kills, %d stops "
        .. "(%d tries), "
        .. "%d overlaps, %d writes accepted, %d refused (%d of %d paused holders' late writes), "
        .. "%d stale accepted, %d lock attempts failed%s, %d releases lost%s%s%s\n")
        :format(name, fig.acquisitions, fig.expected, fig.seconds, fig.takeovers, fig.kills,
            fig.stops, fig.probes, fig.overlaps, fig.accepted, fig.refused, fig.stale_refused,
            fig.stale_expected, fig.stale_accepted, fig.lock_failures, tally(fig.failure_codes),
            fig.lost, tally(fig.lost_codes),
            fig.max_holders and (", at most %d valid permits at once"):format(fig.max_holders)
                or "",
            fig.disturbed_at and (", disturbed after %d acquisitions%s"):format(fig.disturbed_at,
                fig.disturbance and " (" .. fig.disturbance .. ")" or "") or "")
end

return torture
