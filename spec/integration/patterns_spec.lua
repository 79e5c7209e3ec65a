-- The patterns built on compare-exchange, run as their examples on every backend:
-- examples/daily_sequence.lua (8 processes drawing at once: no duplicates, no gaps;
-- the day change) and examples/email_reservation.lua (duplicates refused, rollback,
-- 8 sign-ups for one address, and a process SIGKILLed between its steps, then
-- reconcile).
local helpers = require "spec.helpers"

local DAY1 = 1800000000         -- 2027-01-15T08:00:00Z
local DAY2 = DAY1 + 16 * 3600   -- 2027-01-16T00:00:00Z

--- The command that runs examples/NAME.lua with `args` after the store arguments.
local function command(name, store_args, args)
    local parts = { "timeout 120", helpers.lua, "-e", helpers.shell_quote(helpers.preload_core),
                    "examples/" .. name .. ".lua" }
    for _, a in ipairs(store_args) do parts[#parts + 1] = helpers.shell_quote(a) end
    for _, a in ipairs(args or {}) do parts[#parts + 1] = helpers.shell_quote(a) end
    return table.concat(parts, " ") .. " 2>&1"
end

local function finish(pipe)
    local out = pipe:read("*a")
    local _, how, code = helpers.pclose(pipe)
    return out, code, how
end

--- The pattern examples for one backend. ctx: name; open() -> a store in a fresh
-- database; example_args() -> the --store (and --database) arguments for it.
local function patterns_contract(ctx)
    local st

    local function run(name, args)
        return finish(assert(helpers.popen(command(name, ctx.example_args(), args))))
    end

    local function start(name, args)
        return assert(helpers.popen(command(name, ctx.example_args(), args)))
    end

    local function remove(key)
        local _, index = st:get(key)
        assert.is_true(index > 0, key .. " is missing")
        assert.is_true((st:delete(key, index)))
    end

    local function assert_absent(key)
        assert.same({ nil, 0 }, { st:get(key) })
    end

    describe("daily sequence (" .. ctx.name .. ")", function()
        before_each(function() st = assert(ctx.open()) end)
        after_each(function()
            st:close()
            helpers.cleanup()
        end)

        it("8 processes drawing at once get every number once, with no gap", function()
            local procs, per = 8, 50
            local go = os.tmpname()
            os.remove(go)
            finally(function() os.remove(go) end)
            local pipes = {}
            for p = 1, procs do
                pipes[p] = start("daily_sequence", { "--name", "tickets", "--count",
                    tostring(per), "--now", tostring(DAY1), "--go", go, "--think", "0.002" })
            end
            -- all of them open and waiting, then all draw at once
            for p = 1, procs do
                local line = pipes[p]:read("*l")
                assert.matches("^ready %(pid %d+%)$", tostring(line))
            end
            assert(io.open(go, "w")):close()
            local seen, highest, duplicates, interleaved, lost = {}, 0, 0, 0, 0
            for p = 1, procs do
                local out, code = finish(pipes[p])
                assert.equal(0, code, out)
                local last
                for day, n, rest in out:gmatch("drew tickets (%S+) #(%d+)([^\n]*)") do
                    assert.equal("2027-01-15", day)
                    n = tonumber(n)
                    lost = lost + (tonumber(rest:match("^ %(after (%d+) lost races?%)$")) or 0)
                    if seen[n] then duplicates = duplicates + 1 end
                    seen[n], highest = true, math.max(highest, n)
                    -- a process's numbers increase; a jump means others drew in between
                    if last then
                        assert.is_true(n > last, out)
                        if n > last + 1 then interleaved = interleaved + 1 end
                    end
                    last = n
                end
            end
            local total, gaps = procs * per, 0
            for n = 1, total do
                if not seen[n] then gaps = gaps + 1 end
            end
            local drawn = 0
            for _ in pairs(seen) do drawn = drawn + 1 end
            io.stderr:write(("\n[daily sequence, %s] %d processes: %d numbers drawn "
                .. "(distinct %d, highest %d), %d duplicates, %d gaps; %d interleavings, "
                .. "%d lost races retried\n")
                :format(ctx.name, procs, drawn + duplicates, drawn, highest, duplicates, gaps,
                    interleaved, lost))
            assert.equal(0, duplicates)
            assert.equal(0, gaps)
            assert.equal(total, drawn)
            assert.equal(total, highest)
            -- lost races prove they drew at once (--think makes them certain); how
            -- often a loser got in before the winner's next draw is up to the scheduler
            assert.is_true(lost > 0, "the processes never drew at the same time")
            local value = st:get("sequences/tickets")
            assert.same({ Day = "2027-01-15", Last = total }, { Day = value.Day, Last = value.Last })
            remove("sequences/tickets")
            assert.same({}, st:list(""))
        end)

        it("restarts at 1 on a new UTC day and never goes back to the day before", function()
            local out, code = run("daily_sequence", { "--count", "3", "--now", tostring(DAY1) })
            assert.equal(0, code, out)
            assert.equal("drew invoices 2027-01-15 #1\ndrew invoices 2027-01-15 #2\n"
                .. "drew invoices 2027-01-15 #3\n", out)
            out, code = run("daily_sequence", { "--count", "2", "--now", tostring(DAY2 - 1) })
            assert.equal(0, code, out)
            assert.equal("drew invoices 2027-01-15 #4\ndrew invoices 2027-01-15 #5\n", out)
            out, code = run("daily_sequence", { "--now", tostring(DAY2) })
            assert.equal(0, code, out)
            assert.equal("drew invoices 2027-01-16 #1\n", out)
            -- a process whose clock is still on the day before draws from the new day
            out, code = run("daily_sequence", { "--now", tostring(DAY2 - 5) })
            assert.equal(0, code, out)
            assert.equal("drew invoices 2027-01-16 #2\n", out)
            -- another sequence is another key
            out, code = run("daily_sequence", { "--name", "orders", "--now", tostring(DAY2) })
            assert.equal(0, code, out)
            assert.equal("drew orders 2027-01-16 #1\n", out)
            remove("sequences/invoices")
            remove("sequences/orders")
            assert.same({}, st:list(""))
        end)
    end)

    describe("email reservation (" .. ctx.name .. ")", function()
        local go

        before_each(function()
            st = assert(ctx.open())
            go = os.tmpname()
            os.remove(go)
        end)
        after_each(function()
            os.remove(go)
            st:close()
            helpers.cleanup()
        end)

        local function reserve(email, user, extra)
            local args = { "--email", email, "--user", user, "--name", "Name of " .. user }
            for _, a in ipairs(extra or {}) do args[#args + 1] = a end
            return run("email_reservation", args)
        end

        --- Starts a sign-up that pauses after `step`; returns its pipe and pid.
        local function paused(email, user, step)
            local p = start("email_reservation", { "--email", email, "--user", user,
                "--pause-after", step, "--go", go })
            local out = {}
            while true do
                local line = p:read("*l")
                assert.truthy(line, "the sign-up ended before pausing: " .. table.concat(out, "\n"))
                out[#out + 1] = line
                local pid = line:match("^paused after " .. step .. " %(pid (%d+)%)$")
                if pid then return p, tonumber(pid), table.concat(out, "\n") end
            end
        end

        local function kill(p, pid)
            helpers.kill(pid, "KILL")
            -- timeout passes on the child's death as 128 + 9; where close() cannot
            -- tell, helpers.pclose reports that as the signal itself
            local out, code, how = finish(p)
            assert.is_true(how == "exit" and code == 128 + 9 or how == "signal" and code == 9,
                out)
        end

        it("reserves, saves and confirms; refuses the address in another case", function()
            local out, code = reserve("Ann@Example.org", "u1")
            assert.equal(0, code, out)
            assert.matches("confirmed Ann@Example.org for user u1", out, 1, true)
            assert.equal("u1", (st:get("emails/ann@example.org")))
            assert.same({ Name = "Name of u1", Email = "Ann@Example.org" }, (st:get("users/u1")))

            out, code = reserve("ann@EXAMPLE.ORG", "u2")
            assert.equal(1, code, out)
            assert.matches("refused: ann@EXAMPLE.ORG is already reserved by user u1 (index ",
                out, 1, true)
            assert_absent("users/u2")
            remove("emails/ann@example.org")
            remove("users/u1")
            assert.same({}, st:list(""))
        end)

        it("a failed save gives the reservation back by its index", function()
            local out, code = reserve("bob@example.org", "u7", { "--fail-save" })
            assert.equal(2, code, out)
            assert.matches("rolled back: bob@example.org is free again", out, 1, true)
            assert_absent("emails/bob@example.org")
            -- a save that fails because the user id exists: rolled back too
            assert.is_true((st:put("users/u8", { Name = "someone" }, 0)))
            out, code = reserve("bob@example.org", "u8")
            assert.equal(2, code, out)
            assert.matches("users/u8 already exists", out, 1, true)
            assert_absent("emails/bob@example.org")
            assert.same({ Name = "someone" }, (st:get("users/u8")))
            out, code = reserve("bob@example.org", "u7")
            assert.equal(0, code, out)
            remove("emails/bob@example.org")
            remove("users/u7")
            remove("users/u8")
            assert.same({}, st:list(""))
        end)

        it("8 sign-ups for one address at once: exactly one wins", function()
            local pipes = {}
            for i = 1, 8 do
                pipes[i] = start("email_reservation", { "--email", "Race@Example.org",
                    "--user", "r" .. i })
            end
            local winners = {}
            for i = 1, 8 do
                local out, code = finish(pipes[i])
                if code == 0 then
                    winners[#winners + 1] = "r" .. i
                else
                    assert.equal(1, code, out)
                    assert.matches("refused: Race@Example.org is already reserved by user r%d", out)
                    assert_absent("users/r" .. i)
                end
            end
            assert.equal(1, #winners)
            assert.equal(winners[1], (st:get("emails/race@example.org")))
            remove("emails/race@example.org")
            remove("users/" .. winners[1])
            assert.same({}, st:list(""))
        end)

        it("a process killed between reserving and saving: reconcile removes its reservation", function()
            local p, pid, out = paused("cy@example.org", "u3", "reserved")
            assert.matches("reserved cy@example.org for user u3", out, 1, true)
            kill(p, pid)
            assert.same({ User = "u3", Pending = true }, (st:get("emails/cy@example.org")))
            assert_absent("users/u3")

            -- left behind, it blocks the address
            local code
            out, code = reserve("cy@example.org", "u4")
            assert.equal(1, code, out)
            assert.matches("already reserved by user u3 (not yet confirmed)", out, 1, true)

            -- a confirmed reservation of someone else is not touched
            assert.equal(0, select(2, reserve("dee@example.org", "u5")))
            out, code = run("email_reservation", { "--reconcile" })
            assert.equal(0, code, out)
            assert.matches("reconcile: emails/cy@example.org removed (user u3, index ", out:lower(),
                1, true)
            assert.matches("reconcile: 1 removed, 0 confirmed, 0 changed meanwhile, 1 kept", out,
                1, true)
            assert_absent("emails/cy@example.org")
            assert.equal("u5", (st:get("emails/dee@example.org")))

            out, code = reserve("cy@example.org", "u4")
            assert.equal(0, code, out)
            out, code = run("email_reservation", { "--reconcile" })
            assert.equal(0, code, out)
            assert.matches("reconcile: 0 removed, 0 confirmed, 0 changed meanwhile, 2 kept", out,
                1, true)
            for _, key in ipairs({ "emails/cy@example.org", "users/u4", "emails/dee@example.org",
                    "users/u5" }) do
                remove(key)
            end
            assert.same({}, st:list(""))
        end)

        it("a process killed between saving and confirming: reconcile confirms", function()
            local p, pid, out = paused("eve@example.org", "u6", "saved")
            assert.matches("saved users/u6", out, 1, true)
            kill(p, pid)
            assert.same({ User = "u6", Pending = true }, (st:get("emails/eve@example.org")))
            local code
            out, code = run("email_reservation", { "--reconcile" })
            assert.equal(0, code, out)
            assert.matches("reconcile: 0 removed, 1 confirmed, 0 changed meanwhile, 0 kept", out,
                1, true)
            assert.equal("u6", (st:get("emails/eve@example.org")))
            remove("emails/eve@example.org")
            remove("users/u6")
            assert.same({}, st:list(""))
        end)

        it("a sign-up whose reservation a reconcile removed reserves again, or gives up its user", function()
            -- reconcile runs while the sign-up is between its steps: it looks dead
            local p, _, out = paused("fay@example.org", "u9", "reserved")
            assert.matches("reserved fay@example.org for user u9", out, 1, true)
            local code
            out, code = run("email_reservation", { "--reconcile" })
            assert.equal(0, code, out)
            assert.matches("1 removed", out, 1, true)
            assert(io.open(go, "w")):close()
            out, code = finish(p)
            assert.equal(0, code, out)
            assert.matches("was removed meanwhile; reserving again", out, 1, true)
            assert.equal("u9", (st:get("emails/fay@example.org")))
            assert.equal("fay@example.org", (st:get("users/u9")).Email)

            -- paused after saving, it looks like a crash before confirming: reconcile
            -- confirms for it, and the sign-up accepts that
            os.remove(go)
            p, _, out = paused("gus@example.org", "u10", "saved")
            assert.matches("saved users/u10", out, 1, true)
            out, code = run("email_reservation", { "--reconcile" })
            assert.equal(0, code, out)
            assert.matches("1 confirmed", out, 1, true)
            assert.equal("u10", (st:get("emails/gus@example.org")))
            assert(io.open(go, "w")):close()
            out, code = finish(p)
            assert.equal(0, code, out)
            assert.matches("confirmed gus@example.org for user u10", out, 1, true)

            -- removed, and someone else takes the address before it confirms: its user goes
            os.remove(go)
            p, _, out = paused("hal@example.org", "u11", "reserved")
            assert.matches("reserved hal@example.org for user u11", out, 1, true)
            assert.equal(0, select(2, run("email_reservation", { "--reconcile" })))
            out, code = reserve("hal@example.org", "u12")
            assert.equal(0, code, out)
            assert(io.open(go, "w")):close()
            out, code = finish(p)
            assert.equal(1, code, out)
            assert.matches("refused: hal@example.org was reserved meanwhile by user u12", out,
                1, true)
            assert.matches("users/u11 removed", out, 1, true)
            assert_absent("users/u11")
            assert.equal("u12", (st:get("emails/hal@example.org")))
            for _, key in ipairs({ "emails/fay@example.org", "users/u9", "emails/gus@example.org",
                    "users/u10", "emails/hal@example.org", "users/u12" }) do
                remove(key)
            end
            assert.same({}, st:list(""))
        end)
    end)
end

--- The atomic reservation (examples/email_reservation.lua --atomic) for one backend:
-- the reservation and its user in one transaction, a process SIGKILLed after each of
-- its steps, 8 sign-ups for one address at once. Whatever happens, every reservation
-- has its user and every user its reservation.
local function atomic_contract(ctx)
    local st, go

    local function run(args)
        local all = { "--atomic" }
        for _, a in ipairs(args) do all[#all + 1] = a end
        return finish(assert(helpers.popen(command("email_reservation", ctx.example_args(), all))))
    end

    local function reserve(email, user)
        return run({ "--email", email, "--user", user, "--name", "Name of " .. user })
    end

    --- The users: {[lower-cased id] = record} (documents on RavenDB, items elsewhere).
    local function users()
        local out = {}
        if st.backend.documents then
            for _, doc in ipairs(assert(st:query("from Users"))) do
                out[doc["@metadata"]["@id"]:lower()] = doc
            end
        else
            for _, item in ipairs(assert(st:list("users/"))) do out[item.key:lower()] = item.value end
        end
        return out
    end

    --- Every reservation names a user saved with that address, every user has its
    -- reservation; returns how many pairs there are.
    local function assert_consistent()
        local people, n = users(), 0
        local reservations = assert(st:list("emails/"))
        for _, item in ipairs(reservations) do
            local user = people[tostring(item.value):lower()]
            assert.is_truthy(user, item.key .. " reserved for a user who does not exist")
            assert.equal(item.key:lower(), ("emails/" .. user.Email):lower())
            n = n + 1
        end
        local count = 0
        for _ in pairs(people) do count = count + 1 end
        assert.equal(n, count, "a user without a reservation")
        return n
    end

    --- Removes every reservation and user: the store is left empty.
    local function clean()
        for _, item in ipairs(assert(st:list(""))) do
            assert.is_true((st:delete(item.key, item.index)))
        end
        if st.backend.documents then
            for id in pairs(users()) do
                local _, cv = st:get_document(id)
                assert.is_true((st:transaction({ { op = "delete_document", id = id,
                    change_vector = cv } })))
            end
            assert.same({}, users())
        end
        assert.same({}, st:list(""))
    end

    --- Starts a sign-up that pauses after `step`; returns its pipe and pid.
    local function paused(email, user, step)
        local p = assert(helpers.popen(command("email_reservation", ctx.example_args(),
            { "--atomic", "--email", email, "--user", user, "--pause-after", step, "--go", go })))
        local out = {}
        while true do
            local line = p:read("*l")
            assert.truthy(line, "the sign-up ended before pausing: " .. table.concat(out, "\n"))
            out[#out + 1] = line
            local pid = line:match("^paused after " .. step .. " %(pid (%d+)%)$")
            if pid then return p, tonumber(pid), table.concat(out, "\n") end
        end
    end

    local function kill(p, pid)
        helpers.kill(pid, "KILL")
        local out, code, how = finish(p)
        assert.is_true(how == "exit" and code == 128 + 9 or how == "signal" and code == 9, out)
    end

    describe("atomic email reservation (" .. ctx.name .. ")", function()
        before_each(function()
            st = assert(ctx.open())
            go = os.tmpname()
            os.remove(go)
        end)
        after_each(function()
            os.remove(go)
            st:close()
            helpers.cleanup()
        end)

        it("reserves and saves in one transaction, finds the user by its email, refuses both ways", function()
            local out, code = reserve("Ann@Example.org", "u1")
            assert.equal(0, code, out)
            assert.matches("reserved Ann@Example.org and saved users/u1 in one transaction", out,
                1, true)
            assert.matches("found users/u1 by its email", out, 1, true)
            assert.equal("users/u1", (st:get("emails/ann@example.org")))
            -- the address in another case: refused, and nothing of u2 written
            out, code = reserve("ann@EXAMPLE.ORG", "u2")
            assert.equal(1, code, out)
            assert.matches("refused: ann@EXAMPLE.ORG is already reserved by users/u1", out, 1, true)
            -- a user id that exists: refused, and the address stays free (no rollback needed)
            out, code = reserve("bob@example.org", "u1")
            assert.equal(2, code, out)
            assert.matches("refused: users/u1 already exists; nothing written", out, 1, true)
            assert.same({ nil, 0 }, { st:get("emails/bob@example.org") })
            -- an earlier run that went through (its reply lost, say) is done, not refused
            out, code = reserve("ann@example.org", "u1")
            assert.equal(0, code, out)
            assert.matches("already reserved for users/u1 (by an earlier run)", out, 1, true)
            assert.equal(1, assert_consistent())
            clean()
        end)

        it("a process SIGKILLed after each step leaves a reservation with its user, or nothing", function()
            -- before the transaction: nothing written
            local p, pid, out = paused("cy@example.org", "u3", "prepared")
            assert.is_falsy(out:find("reserved", 1, true))
            kill(p, pid)
            assert.same({ nil, 0 }, { st:get("emails/cy@example.org") })
            assert.equal(0, assert_consistent())
            -- after it: both written; nothing to reconcile, and the address is taken
            p, pid, out = paused("cy@example.org", "u3", "committed")
            assert.matches("reserved cy@example.org and saved users/u3 in one transaction", out,
                1, true)
            kill(p, pid)
            assert.equal(1, assert_consistent())
            local code
            out, code = reserve("cy@example.org", "u4")
            assert.equal(1, code, out)
            out, code = run({ "--reconcile" })
            assert.equal(0, code, out)
            assert.matches("reconcile: 0 removed, 0 confirmed, 0 changed meanwhile, 1 kept", out,
                1, true)
            assert.equal(1, assert_consistent())
            clean()
        end)

        it("8 sign-ups for one address at once: exactly one wins, the others write nothing", function()
            local pipes = {}
            for i = 1, 8 do
                pipes[i] = assert(helpers.popen(command("email_reservation", ctx.example_args(),
                    { "--atomic", "--email", "Race@Example.org", "--user", "r" .. i })))
            end
            local winners = {}
            for i = 1, 8 do
                local out, code = finish(pipes[i])
                if code == 0 then
                    winners[#winners + 1] = "users/r" .. i
                else
                    assert.equal(1, code, out)
                    assert.matches("refused: Race@Example.org is already reserved by users/r%d", out)
                end
            end
            assert.equal(1, #winners)
            assert.equal(winners[1], (st:get("emails/race@example.org")))
            assert.equal(1, assert_consistent())
            clean()
        end)
    end)
end

require("spec.support.backends").each(patterns_contract, teardown)
require("spec.support.backends").each(atomic_contract, teardown)
