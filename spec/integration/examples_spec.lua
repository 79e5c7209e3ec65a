-- luacheck: std +busted
-- Runs the programs in examples/ as child processes against a fresh store file and
-- checks what they print, how they exit and what they leave in the store: the
-- examples are documentation, and this keeps them true.
local cmpxchg = require "cmpxchg"
local helpers = require "spec.helpers"

local LUA = helpers.lua

local function shell_quote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- The command line for examples/NAME.lua with `args`; `timeout` keeps a hung child
-- from hanging the suite (it exits 124 then, which fails the test).
local function command(name, path, args)
    local parts = { "timeout 60", LUA, "-e", shell_quote(helpers.preload_core),
        "examples/" .. name .. ".lua", "--store", shell_quote(path) }
    for _, a in ipairs(args or {}) do parts[#parts + 1] = shell_quote(a) end
    return table.concat(parts, " ") .. " 2>&1"
end

local function finish(pipe)
    local output = pipe:read("*a")
    local _, how, code = helpers.pclose(pipe)
    return output, how == "exit" and code or -code
end

--- output, exit status of one run of examples/NAME.lua
local function run(name, path, args)
    return finish(assert(helpers.popen(command(name, path, args))))
end

local function indexes(output, pattern)
    local list = {}
    for index in output:gmatch(pattern) do list[#list + 1] = math.tointeger(index) end
    return list
end

local function assert_increasing(list)
    for i = 2, #list do
        assert.is_true(list[i] > list[i - 1], ("index #%d (%d) is not above #%d (%d)")
            :format(i, list[i], i - 1, list[i - 1]))
    end
end

-- monitor.lua and shared_resource.lua show `<close>`: Lua 5.4 programs
local describe_54 = helpers.has_close and describe or function(name)
    pending(name .. " uses <close> (Lua 5.4 syntax)")
end

describe("examples", function()
    local path, store

    before_each(function()
        path = os.tmpname()
        store = assert(cmpxchg.open(path))
    end)

    after_each(function()
        store:close()
        for _, suffix in ipairs({ "", "-wal", "-shm", "-journal" }) do
            os.remove(path .. suffix)
        end
    end)

    local function assert_absent(key)
        local value, index = store:get(key)
        assert.is_nil(value)
        assert.equal(0, index)
    end

    local function assert_empty()
        assert.same({}, store:list(""))
    end

    describe_54("monitor.lua", function()
        it("--unattended 5 runs 5 rounds with strictly increasing indexes", function()
            local output, status = run("monitor", path, { "--unattended", "5", "--hold", "0.01" })
            assert.equal(0, status, output)
            local rounds = indexes(output, "round %d+: acquired index (%d+), released")
            assert.equal(5, #rounds, output)
            -- the <close> round comes last, so its token is the highest
            local scoped = indexes(output, "scoped: acquired index (%d+), released by <close>")
            assert.equal(1, #scoped, output)
            rounds[6] = scoped[1]
            assert_increasing(rounds)
            assert_absent("processes/monitor-demo")
        end)

        it("two processes started together both finish, with distinct tokens", function()
            local args = { "--unattended", "5", "--key", "processes/shared" }
            local a = assert(helpers.popen(command("monitor", path, args)))
            local b = assert(helpers.popen(command("monitor", path, args)))
            local out_a, status_a = finish(a)
            local out_b, status_b = finish(b)
            assert.equal(0, status_a, out_a)
            assert.equal(0, status_b, out_b)
            local seen = {}
            for _, output in ipairs({ out_a, out_b }) do
                local tokens = indexes(output, "acquired index (%d+)")
                assert.equal(6, #tokens, output)
                assert_increasing(tokens)
                for _, t in ipairs(tokens) do
                    assert.is_nil(seen[t], "token " .. t .. " granted twice")
                    seen[t] = true
                end
            end
            assert_absent("processes/shared")
        end)

        it("interactive: ENTER acquires, ENTER releases, l uses <close>, q quits", function()
            local cmd = "printf '\\n\\nl\\n\\nq\\n' | " .. command("monitor", path, {})
            local output, status = finish(assert(helpers.popen(cmd)))
            assert.equal(0, status, output)
            assert.equal(1, #indexes(output, "round 1: acquired index (%d+), released"), output)
            assert.equal(1, #indexes(output, "scoped: acquired index (%d+)"), output)
            assert_absent("processes/monitor-demo")
        end)

        it("fails with a message on a bad argument", function()
            local output, status = run("monitor", path, { "--hold", "soon" })
            assert.equal(1, status)
            assert.matches("--hold needs a number", output, 1, true)
            assert_empty()
        end)
    end)

    describe("email_reservation.lua", function()
        local function reserve(email, user, extra)
            local args = { "--email", email, "--user", user, "--name", "Name of " .. user }
            for _, a in ipairs(extra or {}) do args[#args + 1] = a end
            return run("email_reservation", path, args)
        end

        -- the example keeps what it saved; the test removes it by index, as a user would
        local function remove(key)
            local _, index = store:get(key)
            assert.is_true(index > 0, key .. " is missing")
            assert.is_true((store:delete(key, index)))
        end

        it("reserves and saves, and refuses the same address in another case", function()
            local output, status = reserve("Ann@Example.org", "users-1")
            assert.equal(0, status, output)
            assert.equal("users-1", (store:get("emails/ann@example.org")))
            assert.same({ Name = "Name of users-1", Email = "Ann@Example.org" },
                (store:get("users/users-1")))

            output, status = reserve("ann@EXAMPLE.ORG", "users-2")
            assert.equal(1, status, output)
            assert.matches("already reserved by user users-1", output, 1, true)
            assert_absent("users/users-2")

            remove("emails/Ann@Example.org")
            remove("users/users-1")
            assert_empty()
        end)

        it("--fail-save rolls the reservation back, so a retry succeeds", function()
            local output, status = reserve("bob@example.org", "users-7", { "--fail-save" })
            assert.equal(2, status, output)
            assert.matches("rolled back", output, 1, true)
            assert_absent("emails/bob@example.org")
            assert_absent("users/users-7")

            output, status = reserve("bob@example.org", "users-7")
            assert.equal(0, status, output)
            remove("emails/bob@example.org")
            remove("users/users-7")
            assert_empty()
        end)
    end)

    describe_54("shared_resource.lua", function()
        local KEY = "printers/first-floor"

        it("reserves, prints and releases", function()
            local output, status = run("shared_resource", path, { "--work", "0.01" })
            assert.equal(0, status, output)
            local token = output:match("token (%d+), ReservedUntil %d+%-%d+%-%d+T[%d:.]+Z")
            assert.is_truthy(token, output)
            assert.matches("released " .. KEY, output, 1, true)
            assert_absent(KEY)
        end)

        it("a live reservation turns others away", function()
            local output, status = run("shared_resource", path, { "--vanish", "--ttl", "600" })
            assert.equal(0, status, output)
            local _, index = store:get(KEY)
            assert.is_true(index > 0, "the reservation is missing")

            output, status = run("shared_resource", path, { "--wait", "0" })
            assert.equal(1, status, output)
            assert.matches("printer busy", output, 1, true)
            assert.equal(index, select(2, store:get(KEY)))    -- untouched

            assert.is_true((store:delete(KEY, index)))
            assert_empty()
        end)

        it("a vanished holder's reservation is taken over after its TTL", function()
            local output, status = run("shared_resource", path, { "--vanish", "--ttl", "1" })
            assert.equal(0, status, output)
            local left, index = store:get(KEY)
            assert.is_true(index > 0, "the vanished holder's reservation is missing")
            assert.is_string(left.ReservedUntil)

            output, status = run("shared_resource", path, { "--wait", "5", "--work", "0.01" })
            assert.equal(0, status, output)
            assert.matches("took over: the previous holder's reservation expired at "
                .. left.ReservedUntil, output, 1, true)
            local token = math.tointeger(output:match("token (%d+)"))
            assert.is_true(token > index, output)
            assert_absent(KEY)
        end)
    end)
end)
