-- The RavenDB chaos test (issue 17): 8 processes (spec/support/ravendb_chaos_worker.lua)
-- take locks, make a fenced write in every critical section and compare-and-set
-- operations on a few keys, against a 3-node emulated cluster while it is disturbed
-- in turn: the leader is killed (an election follows), a follower lags, the majority
-- is lost for longer than a lock's ttl, and the database moves to another node.
--
-- What must hold, whatever happened: no two valid leases of a key overlap; no fenced
-- write with a token older than one accepted before it is accepted; every call ends
-- within its bound; the compare-and-set history is what the README promises on a
-- RavenDB cluster (writes linearizable; a get may be served by a node that lags, so it
-- returns a state the key had at most `LAG + READ_SLACK` seconds before it returned,
-- never one it never had, never one from the future). One report line per
-- disturbance.
--
-- The history is checked by issue 14's linearizability checker
-- (spec/support/history/checker.lua) when it is in the tree: each get may take
-- effect up to the staleness bound before its invocation, every other operation
-- within its own interval. Until then a weaker check of the same history runs (see
-- `light_check`), and the report says which one ran.
local core = require "cmpxchg.core"
local harness = require "spec.support.ravendb_harness"
local helpers = require "spec.helpers"
local json = require "cmpxchg.json"

local server = harness.server()
local emulated = server.real and pending or it

local WORKERS = 8
local LAG = 1.5                 -- seconds the lagging follower applies the log late
local READ_SLACK = 1.0          -- timers and scheduling on a busy machine, on top of LAG
local TTL = 2                   -- the workers' lock ttl (spec/support/ravendb_chaos_worker.lua)
local STORE_TIMEOUT = 3         -- their store timeout
local SLACK = 3                 -- a busy 2-core machine, on top of every bound
-- the longest each kind of call may take (the worker's settings, see the README):
local BOUNDS = {
    get = STORE_TIMEOUT + SLACK,
    put = STORE_TIMEOUT + SLACK,
    delete = STORE_TIMEOUT + SLACK,
    -- the lock's timeout, then the write in flight and its resend
    lock = 4 + 2 * STORE_TIMEOUT + SLACK,
    -- an extend left unknown is settled, then the delete and its resend
    release = 4 * STORE_TIMEOUT + SLACK,
    -- fenced.write's own 6 s, then the read and the write in flight
    fenced = 6 + 2 * STORE_TIMEOUT + SLACK,
}

local function control(method, path, body)
    return harness.control(server, method, path, body)
end

local function read_lines(path)
    local out = {}
    local f = io.open(path, "r")
    if not f then return out end
    for line in f:lines() do
        local e = json.decode(line)
        if type(e) == "table" then out[#out + 1] = e end
    end
    f:close()
    return out
end

--- Waits until `fn` holds, polling; false after `seconds`.
local function until_true(seconds, fn)
    local deadline = core.monotime() + seconds
    while core.monotime() < deadline do
        if fn() then return true end
        core.sleep(0.05)
    end
    return fn()
end

--[[ The checks of the history that need no checker: every value a read or a
failed compare reports was written by a put, at the index the put got when it
told (a value never written, or one at another index, is a lie); and none was
written after the operation that saw it had returned (no value from the future).
Returns the problems found, in words. ]]
local function light_check(ops)
    local problems, writes = {}, {}
    for _, op in ipairs(ops) do
        if op.kind == "put" and op.value then writes[op.key .. "\0" .. op.value] = op end
    end
    for _, op in ipairs(ops) do
        if (op.outcome == "ok" and op.kind == "get") or op.outcome == "fail" then
            if op.r_value ~= nil then
                local w = writes[op.key .. "\0" .. op.r_value]
                if not w then
                    problems[#problems + 1] = ("%s#%s saw %s on %s, which no put wrote")
                        :format(op.proc, op.n, op.r_value, op.key)
                elseif w.call > op.ret then
                    problems[#problems + 1] = ("%s#%s saw %s before it was written")
                        :format(op.proc, op.n, op.r_value)
                elseif w.outcome == "fail" or w.outcome == "error" then
                    problems[#problems + 1] = ("%s#%s saw %s, whose put was not applied")
                        :format(op.proc, op.n, op.r_value)
                elseif w.outcome == "ok" and w.r_index ~= op.r_index then
                    problems[#problems + 1] = ("%s#%s saw %s at index %s, written at %s")
                        :format(op.proc, op.n, op.r_value, tostring(op.r_index), tostring(w.r_index))
                end
            elseif op.r_index ~= 0 then
                problems[#problems + 1] = ("%s#%s saw no value at index %s"):format(op.proc, op.n,
                    tostring(op.r_index))
            end
        end
    end
    return problems
end

--- The history from the workers' files: with issue 14's checker when it is in the
-- tree (its reader, then its check), else `light_check` on the same lines.
local function check_history(paths, window)
    local has_checker, checker = pcall(require, "spec.support.history.checker")
    if has_checker then
        local ops, fig = checker.read_logs(paths)
        -- what a RavenDB cluster promises (README): a get may be served by a node
        -- that is `window` seconds behind, so it may take effect that much earlier
        for _, op in ipairs(ops) do
            if op.kind == "get" then op.call = op.call - window end
        end
        local result = checker.check(ops, { max_steps = 3000000 })
        return { checker = "issue 14's linearizability checker", ok = result.ok, ops = result.ops,
                 unknown = result.unknown, report = not result.ok and checker.report(result) or nil,
                 figures = fig }
    end
    -- the recorder's lines, read as the checker reads them
    local ops, open, unknown = {}, {}, 0
    for _, path in ipairs(paths) do
        for _, e in ipairs(read_lines(path)) do
            local id = tostring(e.p) .. "#" .. tostring(e.n)
            if e.e == "call" then
                open[id] = { key = e.k, kind = e.f, value = e.v, index = e.i, call = e.t,
                             proc = e.p, n = e.n }
            elseif open[id] then
                local op = open[id]
                open[id] = nil
                op.ret, op.outcome = e.t, e.e
                op.r_index = e.i and math.floor(e.i)
                op.r_value = e.v ~= json.null and e.v or nil
                if e.e == "unknown" then unknown = unknown + 1 end
                ops[#ops + 1] = op
            end
        end
    end
    local problems = light_check(ops)
    return { checker = "the light check (values written, none from the future; issue 14's "
             .. "checker is not in the tree yet)", ok = #problems == 0, ops = #ops,
             unknown = unknown, report = table.concat(problems, "\n") }
end

describe("ravendb chaos", function()
    emulated("8 processes, locks and compare-and-set through a leader kill, a lagging follower, "
        .. "a lost majority and a database move", function()
        local seconds = 44          -- the workers' run; the disturbances fit in it
        control("POST", "/reset")
        local db = harness.create_database(server)
        -- the database lives on A and B; C joins it when it moves (the last disturbance)
        control("POST", "/databases/" .. db .. "/topology", { members = { 0, 1 } })
        control("POST", "/cluster", { election_ms = 800, operation_timeout_ms = 2000 })
        local logdir = os.tmpname()
        os.remove(logdir)
        assert(os.execute("mkdir -p " .. logdir))

        local workers = {}
        for i = 1, WORKERS do
            workers[i] = helpers.start("spec/support/ravendb_chaos_worker.lua",
                { table.concat(server.urls, ","), db, tostring(i), logdir, tostring(seconds) })
        end
        local t_start = core.monotime()
        local windows, report = {}, {}
        local function at(offset)       -- sleeps until `offset` seconds into the run
            local left = t_start + offset - core.monotime()
            if left > 0 then core.sleep(left) end
        end
        local function window(name, detail, t0, t1)
            windows[#windows + 1] = { name = name, detail = detail, t0 = t0, t1 = t1 }
        end
        local function cluster()
            local c = control("GET", "/cluster")
            if c.leader == json.null then c.leader = nil end
            if c.leader then c.leader = math.floor(c.leader) end
            return c
        end

        local ok_run, run_err = pcall(function()
            at(4)
            -- 1. the leader is killed: an election follows
            local leader = cluster().leader
            local t0 = core.monotime()
            control("POST", ("/nodes/%d/stop"):format(leader))
            local elected = until_true(10, function()
                local c = cluster()
                return c.leader ~= nil and c.leader ~= leader
            end)
            local election = core.monotime() - t0
            local new_leader = cluster().leader
            at(10)
            control("POST", ("/nodes/%d/start"):format(leader))
            window("leader killed", ("node %s stopped for %.1f s, %s elected after %.2f s")
                :format(string.char(65 + leader), core.monotime() - t0,
                    elected and string.char(65 + new_leader) or "nobody", election),
                t0, core.monotime())
            assert(elected, "no leader was elected")

            at(13)
            -- 2. a follower lags: leadership goes to C (outside the database group), so
            -- that the node the workers now talk to (B) is a follower, and B lags
            local c = cluster()
            local follower = c.leader == 2 and 1 or c.leader
            control("POST", "/leader", { node = 2 })
            until_true(10, function() return cluster().leader == 2 end)
            t0 = core.monotime()
            control("POST", ("/nodes/%d/lag"):format(follower), { ms = LAG * 1000 })
            -- it refuses some writes too (503), so that the workers it refused write through
            -- A and read there, while the others still read B: reads go stale
            control("POST", "/faults", { node = follower, method = "PUT", path_contains = "cmpxchg",
                action = "status", status = 503, count = 12 })
            at(20)
            control("POST", ("/nodes/%d/lag"):format(follower), { ms = 0 })
            control("DELETE", "/faults")
            window("follower lags", ("leadership moved to C, then node %s applied the log %.1f s "
                .. "late for %.1f s and refused 12 writes (503)"):format(string.char(65 + follower),
                LAG, core.monotime() - t0), t0, core.monotime())

            at(23)
            -- 3. the majority is lost for longer than a lock's ttl
            c = cluster()
            local down = { c.leader, (c.leader + 1) % 3 }
            t0 = core.monotime()
            for _, n in ipairs(down) do control("POST", ("/nodes/%d/stop"):format(n)) end
            at(23 + TTL + 2)
            for _, n in ipairs(down) do control("POST", ("/nodes/%d/start"):format(n)) end
            local back = until_true(10, function()
                return cluster().leader ~= nil
            end)
            window("majority lost", ("nodes %s and %s stopped for %.1f s (ttl %d s), a leader again after %.1f s")
                :format(string.char(65 + down[1]), string.char(65 + down[2]), TTL + 2, TTL,
                    core.monotime() - t0), t0, core.monotime())
            assert(back, "no leader after the majority came back")

            at(32)
            -- 4. the database moves off both its nodes, to C
            t0 = core.monotime()
            local moved = control("POST", "/databases/" .. db .. "/topology", { members = { 2 } })
            window("database moved", ("from A and B to C (topology etag %d); A and B answer 410")
                :format(moved.etag), t0, t0 + 6)
        end)

        -- the workers end by themselves
        local outputs = {}
        for i, w in ipairs(workers) do outputs[i] = w:read("*a"); w:close() end
        local t_end = core.monotime()
        control("POST", "/reset")
        assert(ok_run, run_err)

        -- what the workers did
        local calls, sections, fences, lost, crashes = {}, {}, {}, 0, {}
        local history = {}
        for i = 1, WORKERS do
            for _, e in ipairs(read_lines(("%s/events-%d.log"):format(logdir, i))) do
                if e.e == "call" then calls[#calls + 1] = e
                elseif e.e == "section" then sections[#sections + 1] = e
                elseif e.e == "fenced" then fences[#fences + 1] = e
                elseif e.e == "lost" then lost = lost + 1
                elseif e.e == "crash" then crashes[#crashes + 1] = ("worker %d: %s"):format(i, e.why)
                end
            end
            history[i] = ("%s/history-%d.log"):format(logdir, i)
        end

        -- 1. no two valid leases of a key overlap: in the order they began, none begins
        -- before the one that ends last so far has ended
        local overlaps, valid = {}, {}
        for _, s in ipairs(sections) do
            if s.held then valid[#valid + 1] = s end
        end
        table.sort(valid, function(p, q) return p.t0 < q.t0 end)
        local latest = {}           -- key -> the section seen so far that ends last
        for _, s in ipairs(valid) do
            local x = latest[s.key]
            if x and s.t0 < x.t1 then
                overlaps[#overlaps + 1] = ("%s (token %d) and %s (token %d) on %s")
                    :format(x.acquisition, x.token, s.acquisition, s.token, s.key)
            end
            if not x or s.t1 > x.t1 then latest[s.key] = s end
        end
        -- 2. no fenced write with an older token accepted after a newer one
        local accepted = {}
        for _, f in ipairs(fences) do
            if f.r == "accepted" then accepted[#accepted + 1] = f end
        end
        table.sort(accepted, function(p, q) return p.index < q.index end)
        local stale, highest = {}, {}
        for _, f in ipairs(accepted) do
            if highest[f.key] and f.token < highest[f.key] then
                stale[#stale + 1] = ("token %d accepted at index %d after token %d")
                    :format(f.token, f.index, highest[f.key])
            end
            highest[f.key] = math.max(highest[f.key] or 0, f.token)
        end
        -- 3. every call within its bound
        local slow, slowest = {}, {}
        for _, e in ipairs(calls) do
            slowest[e.kind] = math.max(slowest[e.kind] or 0, e.d)
            if e.d > BOUNDS[e.kind] then
                slow[#slow + 1] = ("%s took %.1f s (bound %d s)"):format(e.kind, e.d, BOUNDS[e.kind])
            end
        end
        -- 4. the history
        local h = check_history(history, LAG + READ_SLACK)

        -- a line per disturbance: what the workers did meanwhile and just after
        local function figures(t0, t1)
            local n, failed, codes, max = 0, 0, {}, 0
            local locks, writes = 0, 0
            for _, e in ipairs(calls) do
                if e.t >= t0 and e.t < t1 then
                    n = n + 1
                    max = math.max(max, e.d)
                    if e.outcome == "error" then
                        failed = failed + 1
                        codes[e.code or "?"] = (codes[e.code or "?"] or 0) + 1
                    elseif e.kind == "lock" then
                        locks = locks + 1
                    elseif e.kind == "put" or e.kind == "delete" then
                        writes = writes + 1
                    end
                end
            end
            local list = {}
            for code, k in pairs(codes) do list[#list + 1] = code .. " " .. k end
            table.sort(list)
            return ("%d calls begun: %d locks taken, %d writes answered, %d errors%s, slowest %.1f s")
                :format(n, locks, writes, failed, #list > 0 and " (" .. table.concat(list, ", ") .. ")" or "",
                    max), locks, writes
        end
        for _, w in ipairs(windows) do
            local during = figures(w.t0, w.t1)
            local after, locks_after, writes_after = figures(w.t1, w.t1 + 3)
            w.locks_after, w.writes_after = locks_after, writes_after
            report[#report + 1] = ("ravendb chaos: %s: %s\n  during: %s\n  3 s after: %s")
                :format(w.name, w.detail, during, after)
        end
        local kinds = {}
        for kind, s in pairs(slowest) do kinds[#kinds + 1] = ("%s %.1f s"):format(kind, s) end
        table.sort(kinds)
        report[#report + 1] = ("ravendb chaos: %d workers, %.0f s, %d calls, %d critical sections, "
            .. "%d fenced writes accepted, %d locks lost; overlaps %d, stale fenced writes accepted %d, "
            .. "calls over their bound %d (slowest: %s); history: %d operations (%d of unknown "
            .. "outcome) checked by %s: %s")
            :format(WORKERS, t_end - t_start, #calls, #sections, #accepted, lost, #overlaps, #stale,
                #slow, table.concat(kinds, ", "), h.ops, h.unknown, h.checker,
                h.ok and "passed" or "FAILED")
        io.stderr:write("\n" .. table.concat(report, "\n") .. "\n")
        os.execute("rm -rf " .. logdir)

        assert.same({}, crashes)
        for i, out in ipairs(outputs) do assert.equal("", out, "worker " .. i .. " said something") end
        assert.same({}, overlaps)
        assert.same({}, stale)
        assert.same({}, slow)
        assert(h.ok, h.report)
        -- and it was a run: every worker worked, and the cluster served again after each
        -- disturbance
        assert.is_true(#sections >= WORKERS, #sections .. " critical sections")
        assert.is_true(#accepted >= WORKERS, #accepted .. " fenced writes accepted")
        for _, w in ipairs(windows) do
            assert.is_true(w.writes_after > 0 or w.locks_after > 0, "nothing worked after: " .. w.name)
        end
    end)
end)
