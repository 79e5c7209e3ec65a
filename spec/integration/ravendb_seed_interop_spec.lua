-- Our Lua locks against the seed's own lock loops on one RavenDB endpoint (the emulator, or
-- a real server when RAVENDB_URL is set): the blog's RavenDbProcessMonitor (ExpiresAt) and
-- the RavenDB docs' SharedResource (ReservedUntil), run with the official npm client by
-- spec/support/ravendb/seed_locks.js, exactly as their C# is written. Mutual exclusion holds
-- both ways, each side takes over the other's expired lease and leaves a live one alone, and
-- each side reads the other's value as a date.
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"
local harness = require "spec.support.ravendb_harness"
local helpers = require "spec.helpers"

local server = harness.server()
local q = helpers.shell_quote

local SEED = "spec/support/ravendb/seed_locks.js"
local CONTENDER = "spec/support/seed_lua_contender.lua"
local CSHARP_DATE = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%d%d%d%dZ$"    -- 28 chars

local URLS = table.concat(server.urls, ",")

--- The last line of a child's output, decoded; raises with the whole output otherwise.
local function result_of(out, code, what)
    local last = out:match("([^\n]+)\n*$")
    local ok, decoded = pcall(json.decode, last or "")
    assert(ok and type(decoded) == "table",
        ("%s (exit %s) printed no result:\n%s"):format(what, tostring(code), out))
    return decoded
end

local function seed_command(db, key, args)
    local parts = { "env -u LD_PRELOAD node", SEED, "--urls", q(URLS), "--database", q(db),
                    "--key", q(key) }
    for _, a in ipairs(args) do parts[#parts + 1] = q(a) end
    return table.concat(parts, " ") .. " 2>&1"
end

--- Runs the seed to completion: its JSON result and exit code.
local function seed(db, key, args)
    local p = assert(helpers.popen(seed_command(db, key, args), "r"))
    local out = p:read("*a")
    local _, _, code = helpers.pclose(p)
    assert(code == 0 or code == 3, ("seed_locks.js failed (exit %s):\n%s"):format(code, out))
    return result_of(out, code, "seed_locks.js"), code
end

local function contender_args(db, key, args)
    local all = { "--urls", URLS, "--database", db, "--key", key }
    for _, a in ipairs(args) do all[#all + 1] = a end
    return all
end

--- Reads a finished child (a popen handle): its JSON result; raises unless it exited 0.
local function finish(child)
    local out = child.handle:read("*a")
    local _, _, code = helpers.pclose(child.handle)
    child.handle = nil
    assert(code == 0, ("%s failed (exit %s):\n%s"):format(child.what, tostring(code), out))
    return result_of(out, code, child.what)
end

--- The critical sections the logs name, sorted by start: {side, token, t0, t1}.
local function read_logs(files)
    local sections = {}
    for _, file in ipairs(files) do
        local f = assert(io.open(file, "r"), "no log " .. file)
        for line in f:lines() do
            local side, token, t0, t1 = line:match("^(%a+) (%d+) ([%d.]+) ([%d.]+)$")
            assert(side, ("bad log line in %s: %q"):format(file, line))
            sections[#sections + 1] = { side = side, token = tonumber(token),
                                        t0 = tonumber(t0), t1 = tonumber(t1), line = line }
        end
        f:close()
    end
    table.sort(sections, function(a, b) return a.t0 < b.t0 end)
    return sections
end

local function read_number(file)
    local f = assert(io.open(file, "r"))
    local n = tonumber(f:read("*a"))
    f:close()
    return n
end

describe("ravendb: our locks and the seed's lock loops on one key", function()
    local st, db, children, files

    setup(function()
        -- node and the official client must be there: fail, never skip
        local check = json.decode(harness.sh(("node %s --check"):format(SEED)))
        assert(type(check.ravendb) == "string", "the official ravendb npm client is missing")
    end)

    before_each(function()
        db = harness.create_database(server)
        st = assert(cmpxchg.open(server.urls, { database = db }))
        children, files = {}, {}
    end)

    after_each(function()
        -- children left waiting by a failed test are let go and waited for
        for _, file in ipairs(files) do
            if file:match("%.go$") then io.open(file, "w"):close() end
        end
        for _, child in ipairs(children) do
            if child.handle then
                child.handle:read("*a")
                helpers.pclose(child.handle)
            end
        end
        st:close()
        harness.delete_database(server, db)
        for _, file in ipairs(files) do os.remove(file) end
    end)

    local function tmpfile(suffix)
        local name = os.tmpname()
        os.remove(name)
        name = name .. suffix
        files[#files + 1] = name
        return name
    end

    local function start_seed(key, args)
        local child = { what = "seed_locks.js " .. table.concat(args, " "),
                        handle = assert(helpers.popen(seed_command(db, key, args), "r")) }
        children[#children + 1] = child
        return child
    end

    --- Seeds that connect, then wait for go(): a check they make then comes at once,
    -- not a Node start-up later. Returns the children, once all are ready, and go.
    local function ready_seeds(key, list)
        local go, ready, started = tmpfile(".go"), {}, {}
        for n, args in ipairs(list) do
            ready[n] = tmpfile(("-%d.ready"):format(n))
            local all = { "--ready", ready[n], "--go", go }
            for _, a in ipairs(args) do all[#all + 1] = a end
            started[n] = start_seed(key, all)
        end
        helpers.wait_until(function()
            for _, file in ipairs(ready) do
                if not helpers.file_exists(file) then return false end
            end
            return true
        end, 60, "the seeds to connect")
        return started, function() io.open(go, "w"):close() end
    end

    --- A started seed's JSON result and exit code (0, or 3: busy).
    local function seed_result(child)
        local out = child.handle:read("*a")
        local _, _, code = helpers.pclose(child.handle)
        child.handle = nil
        assert(code == 0 or code == 3, ("%s failed (exit %s):\n%s"):format(child.what,
            tostring(code), out))
        return result_of(out, code, child.what), code
    end

    local function start_lua(key, args)
        local child = { what = "seed_lua_contender.lua " .. table.concat(args, " "),
                        handle = helpers.start(CONTENDER, contender_args(db, key, args)) }
        children[#children + 1] = child
        return child
    end

    for _, case in ipairs({
        { field = "ExpiresAt", layout = "monitor layout (RavenDbProcessMonitor)",
          seed_key = "processes/nightly", lua_key = "processes/nightly" },
        -- the docs' key as they spell it; ours in another case is the same key
        { field = "ReservedUntil", layout = "shared-resource layout (the docs' SharedResource)",
          seed_key = "Printer/First-Floor", lua_key = "printer/first-floor" },
    }) do
        it("2 seed and 2 Lua processes exclude each other, " .. case.layout, function()
            local ROUNDS, LEASE, HOLD, GAP = 15, "10", "0.02", "0.04"
            local go, counter = tmpfile(".go"), tmpfile(".counter")
            local logs, ready = {}, {}
            for n = 1, 4 do
                logs[n], ready[n] = tmpfile(("-%d.log"):format(n)), tmpfile(("-%d.ready"):format(n))
                local args = { "--field", case.field, "--lease", LEASE, "--hold", HOLD,
                               "--gap", GAP, "--rounds", tostring(ROUNDS), "--log", logs[n],
                               "--counter", counter, "--ready", ready[n], "--go", go }
                if n <= 2 then start_seed(case.seed_key, args) else start_lua(case.lua_key, args) end
            end
            helpers.wait_until(function()
                for _, file in ipairs(ready) do
                    if not helpers.file_exists(file) then return false end
                end
                return true
            end, 60, "the four contenders to connect")
            io.open(go, "w"):close()

            local results = {}
            for n, child in ipairs(children) do results[n] = finish(child) end

            local sections = read_logs(logs)
            local count = { js = 0, lua = 0 }
            local handovers = { js = 0, lua = 0 }       -- from that side to the other
            local problems = {}
            for k, s in ipairs(sections) do
                count[s.side] = count[s.side] + 1
                assert.is_true(s.t1 >= s.t0, s.line)
                local prev = sections[k - 1]
                if prev then
                    if s.t0 < prev.t1 then
                        problems[#problems + 1] = ("overlap: %s | %s"):format(prev.line, s.line)
                    end
                    if s.token <= prev.token then
                        problems[#problems + 1] = ("token not increasing: %s | %s")
                            :format(prev.line, s.line)
                    end
                    if prev.side ~= s.side then
                        handovers[prev.side] = handovers[prev.side] + 1
                    end
                end
            end
            assert.same({}, problems)
            assert.same({ js = 2 * ROUNDS, lua = 2 * ROUNDS }, count)
            -- no update lost in the shared counter: no two holders were ever inside at once
            assert.equal(4 * ROUNDS, read_number(counter))
            -- the lock went from each side to the other, not one side's run then the other's
            assert.is_true(handovers.js >= 1 and handovers.lua >= 1,
                ("handovers js->lua %d, lua->js %d"):format(handovers.js, handovers.lua))
            -- every section released its own lease (none was taken over: leases are long)
            for n = 1, 2 do
                assert.equal(ROUNDS, #results[n].sections)
                for _, s in ipairs(results[n].sections) do
                    assert.same({ true, false }, { s.released, s.takeover })
                    assert.matches(CSHARP_DATE, s.written)
                end
            end
            for n = 3, 4 do
                assert.equal(ROUNDS, #results[n].sections)
                for _, s in ipairs(results[n].sections) do
                    assert.same({ true, 0 }, { s.released, s.takeovers })
                end
            end

            -- released by everyone: nothing left under the key
            assert.same({ nil, 0 }, { st:get(case.lua_key) })
        end)
    end

    --- Runs `try(lease)` with leases of 3, 6, 12, 24 and 48 s until a run is conclusive.
    -- Whether a side leaves a lease alone means something only when the lease still
    -- ran at its check, which a loaded machine may make later than any fixed lease:
    -- each run proves by the clocks which case it met, and returns true, or false and
    -- why it proved nothing (a lease that ran out first, taken over as it should be);
    -- the next run gets a lease twice as long. A wrong decision fails at once.
    local function with_lease(try)
        local lease, missed = 3, {}
        while lease <= 48 do
            local done, why = try(lease)
            if done then return end
            missed[#missed + 1] = ("%g s: %s"):format(lease, why)
            io.stderr:write(("\n[seed interop] a %g s lease proved nothing (%s): again with %g s\n")
                :format(lease, why, lease * 2))
            lease = lease * 2
        end
        error("no run was conclusive: " .. table.concat(missed, "; "))
    end

    for _, field in ipairs({ "ExpiresAt", "ReservedUntil" }) do
        local key = field == "ExpiresAt" and "processes/nightly" or "Printer/First-Floor"

        it(("takes over the expired lease of a seed holder that vanished (%s)"):format(field),
            function()
            local held, ends
            with_lease(function(lease)
                local r = seed(db, key, { "--field", field, "--lease", tostring(lease), "--vanish" })
                held = assert(r.sections[1], "the seed did not acquire")
                assert.is_false(held.takeover)
                -- what landed on the server is the C# object: the one field, C#'s 28-char date
                local value, index = st:get(key)
                assert.equal(held.token, index)
                assert.same({ [field] = held.written }, value)
                assert.matches(CSHARP_DATE, value[field])
                assert.equal(28, #value[field])
                ends = assert(core.parse_time(value[field]))

                -- while its lease runs we leave it alone
                local before = core.time()
                local l, err, code = st:lock(key, { expires_field = field, ttl = 5, timeout = 0 })
                local after = core.time()
                if l then
                    assert.is_true(l:valid_until() - 5 >= ends,
                        ("took a live lease at %.6f, the seed's lease ends at %.6f")
                            :format(l:valid_until() - 5, ends))
                    assert.same({ true }, { l:release() })
                    return false, "the seed's lease ran out before our check"
                end
                assert.equal("timeout", code, err)
                assert.is_true(before < ends, ("left alone a lease that ended at %.6f, "
                    .. "checked from %.6f"):format(ends, before))
                assert.equal(held.token, select(2, st:get(key)))
                if after < ends then return true end
                assert.is_true(st:delete(key, held.token))
                return false, "our check ended after the seed's lease"
            end)

            -- once it has run out, we take it over
            local reader, go = ready_seeds(key, { { "--field", field, "--read" } })
            local l = assert(st:lock(key, { expires_field = field, ttl = 30,
                                            timeout = math.max(ends - core.time(), 0) + 30 }))
            assert.equal(1, l.takeovers)
            assert.is_true(l:token() > held.token)
            assert.is_true(l:valid_until() - 30 >= ends,
                ("took over at %.6f, the seed's lease ends at %.6f"):format(l:valid_until() - 30, ends))
            -- and the seed sees our lease now, live
            go()
            local seen = seed_result(reader[1])
            assert.same({ l:token(), false }, { seen.index, seen.expired })
            assert.same({ true }, { l:release() })
            assert.same({ nil, 0 }, { st:get(key) })
        end)

        it(("the seed takes over the expired lease of a Lua holder that vanished (%s)"):format(field),
            function()
            local held, ends
            with_lease(function(lease)
                -- the seed starts and connects first: its check comes right after our
                -- holder has gone
                local checker, go = ready_seeds(key, { { "--field", field, "--lease", "5",
                                                         "--attempts", "1" } })
                held = finish(start_lua(key, { "--field", field, "--lease", tostring(lease),
                                               "--vanish" }))
                local value, index = st:get(key)
                assert.equal(held.token, index)
                assert.equal(held.written, value[field])
                ends = assert(core.parse_time(held.written))

                go()
                local r, code = seed_result(checker[1])
                if code == 0 then
                    -- it took our lease: right only when it had run out by the seed's clock
                    local s = r.sections[1]
                    assert.is_true(s.takeover)
                    assert.is_true(s.checked >= ends, ("the seed took our live lease: checked "
                        .. "at %.6f, our lease ends at %.6f"):format(s.checked, ends))
                    return false, "our lease ran out before the seed's check"
                end
                -- while our lease runs, the seed's loop does not take it
                assert.same({ true, {} }, { r.busy, r.sections })
                assert.is_true(r.checked < ends, ("the seed left alone a lease that ended at "
                    .. "%.6f, checked at %.6f"):format(ends, r.checked))
                assert.equal(held.token, select(2, st:get(key)))
                return true
            end)

            -- once it has run out, the seed takes it over
            local log = tmpfile(".log")
            local r = seed(db, key, { "--field", field, "--lease", "5", "--log", log })
            local s = assert(r.sections[1], "the seed did not acquire")
            assert.is_true(s.takeover)
            assert.is_true(s.token > held.token)
            assert.is_true(s.start >= ends,
                ("took over at %.6f, our lease ends at %.6f"):format(s.start, ends))
            assert.is_true(s.released)
            local sections = read_logs({ log })
            assert.same({ "js", s.token }, { sections[1].side, sections[1].token })
            assert.same({ nil, 0 }, { st:get(key) })
        end)

        it(("the seed reads our lock's %s as a live C# date and leaves it alone"):format(field),
            function()
            -- both seeds start and connect before the lock is taken: the lease need
            -- only outlast a read and three attempts, not two Node start-ups
            local seeds, go = ready_seeds(key, { { "--field", field, "--read" },
                                                 { "--field", field, "--attempts", "3" } })
            local l = assert(st:lock(key, { expires_field = field, ttl = 30 }))
            go()
            local seen = seed_result(seeds[1])
            local busy, code = seed_result(seeds[2])
            assert.equal(l:token(), seen.index)
            assert.matches(CSHARP_DATE, seen.raw)
            assert.is_false(seen.expired)
            assert.is_true(seen.expires > seen.now)
            assert.is_true(math.abs(seen.expires - l:valid_until()) < 0.001,
                ("the seed reads %.7f, we hold until %.7f"):format(seen.expires, l:valid_until()))
            assert.same({ 3, true, {} }, { code, busy.busy, busy.sections })
            assert.is_true(l:is_held())
            assert.same({ true }, { l:release() })
            assert.same({ nil, 0 }, { st:get(key) })
        end)
    end
end)
