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

    for _, field in ipairs({ "ExpiresAt", "ReservedUntil" }) do
        local key = field == "ExpiresAt" and "processes/nightly" or "Printer/First-Floor"

        it(("takes over the expired lease of a seed holder that vanished (%s)"):format(field),
            function()
            local r = seed(db, key, { "--field", field, "--lease", "3", "--vanish" })
            local held = assert(r.sections[1], "the seed did not acquire")
            assert.is_false(held.takeover)
            -- what landed on the server is the C# object: the one field, C#'s 28-char date
            local value, index = st:get(key)
            assert.equal(held.token, index)
            assert.same({ [field] = held.written }, value)
            assert.matches(CSHARP_DATE, value[field])
            assert.equal(28, #value[field])
            local ends = assert(core.parse_time(value[field]))

            -- while its lease runs we leave it alone
            local none, err, code = st:lock(key, { expires_field = field, ttl = 5, timeout = 0 })
            assert.is_nil(none)
            assert.equal("timeout", code, err)
            assert.is_true(core.time() < ends, "the check ran after the seed's lease ended")
            assert.equal(held.token, select(2, st:get(key)))

            -- once it has run out, we take it over
            local l = assert(st:lock(key, { expires_field = field, ttl = 5, timeout = 15 }))
            assert.equal(1, l.takeovers)
            assert.is_true(l:token() > held.token)
            assert.is_true(l:valid_until() - 5 >= ends,
                ("took over at %.6f, the seed's lease ends at %.6f"):format(l:valid_until() - 5, ends))
            -- and the seed sees our lease now, live
            local seen = seed(db, key, { "--field", field, "--read" })
            assert.same({ l:token(), false }, { seen.index, seen.expired })
            assert.same({ true }, { l:release() })
            assert.same({ nil, 0 }, { st:get(key) })
        end)

        it(("the seed takes over the expired lease of a Lua holder that vanished (%s)"):format(field),
            function()
            local holder = start_lua(key, { "--field", field, "--lease", "3", "--vanish" })
            local held = finish(holder)
            local value, index = st:get(key)
            assert.equal(held.token, index)
            assert.equal(held.written, value[field])
            local ends = assert(core.parse_time(held.written))

            -- while our lease runs, the seed's loop does not take it
            local busy, code = seed(db, key, { "--field", field, "--lease", "5", "--attempts", "1" })
            assert.same({ 3, true, {} }, { code, busy.busy, busy.sections })
            assert.is_true(core.time() < ends, "the check ran after our lease ended")
            assert.equal(held.token, select(2, st:get(key)))

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
            local l = assert(st:lock(key, { expires_field = field, ttl = 30 }))
            local seen = seed(db, key, { "--field", field, "--read" })
            assert.equal(l:token(), seen.index)
            assert.matches(CSHARP_DATE, seen.raw)
            assert.is_false(seen.expired)
            assert.is_true(seen.expires > seen.now)
            assert.is_true(math.abs(seen.expires - l:valid_until()) < 0.001,
                ("the seed reads %.7f, we hold until %.7f"):format(seen.expires, l:valid_until()))
            local busy, code = seed(db, key, { "--field", field, "--attempts", "3" })
            assert.same({ 3, true, {} }, { code, busy.busy, busy.sections })
            assert.is_true(l:is_held())
            assert.same({ true }, { l:release() })
            assert.same({ nil, 0 }, { st:get(key) })
        end)
    end
end)
