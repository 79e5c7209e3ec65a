-- Fencing tokens on every backend: examples/fencing.lua runs and shows the refusal,
-- and a holder paused (SIGSTOP) past its lease has its late write refused by a
-- resource that checks tokens (the rule of spec/support/fenced_writer.lua).
local core = require "cmpxchg.core"
local fenced = require "spec.support.fenced_writer"
local helpers = require "spec.helpers"

local proc_state = helpers.proc_state

--- The fencing examples for one backend. ctx: name; open() -> a store in a fresh
-- database; target() -> the string that child processes open for that store;
-- example_args() -> the --store (and --database) arguments of the example.
local function fencing_contract(ctx)
    describe("fencing (" .. ctx.name .. ")", function()
        local st

        before_each(function() st = assert(ctx.open()) end)
        after_each(function()
            st:close()
            helpers.cleanup()
        end)

        it("examples/fencing.lua refuses the late write of the expired holder", function()
            local args = ctx.example_args()
            for i, a in ipairs(args) do args[i] = helpers.shell_quote(a) end
            local p = assert(helpers.popen(("timeout 60 %s -e %s examples/fencing.lua %s 2>&1")
                :format(helpers.lua, helpers.shell_quote(helpers.preload_core), table.concat(args, " "))))
            local out = p:read("*a")
            local _, _, code = helpers.pclose(p)
            assert.equal(0, code, out)
            local a = tonumber(out:match("A holds locks/reports/daily with token (%d+)"))
            local b = tonumber(out:match("B took over the expired lease: token (%d+) %(takeovers 1%)"))
            assert.truthy(a and b, out)
            assert.is_true(b > a)
            assert.matches("A writes reports/daily: accepted", out)
            assert.matches("B writes reports/daily: accepted", out)
            assert.matches(("A's late write with token %d: refused, token %d is recorded")
                :format(a, b), out)
            assert.matches('reports/daily now holds "report by B"', out)
            assert.matches("A releases: false %(lost%)", out)
            assert.same({}, assert(st:list("")))      -- it cleans up after itself
        end)

        it("refuses the late write of a holder paused past its lease", function()
            local go = os.tmpname()
            os.remove(go)
            local child = helpers.start("spec/support/fenced_writer.lua",
                { ctx.target(), "locks/resource", "resource", "1", go })
            local pid, closed = nil, false
            finally(function()
                if not closed then      -- never signal a pid that may have been reused
                    if pid then
                        helpers.kill(pid, "KILL")
                        helpers.kill(pid, "CONT")
                    end
                    helpers.pclose(child)
                end
                os.remove(go)
            end)
            local line = child:read("*l")
            local token
            token, pid = tostring(line):match("^held (%d+) (%d+)$")
            assert.truthy(token, "the holder said: " .. tostring(line))
            token, pid = tonumber(token), tonumber(pid)
            -- the holder made its write before it said "held"
            assert.equal(token, (st:get("resource")).Token)

            helpers.kill(pid, "STOP")
            helpers.wait_until(function() return proc_state(pid) == "T" end, 5,
                "the holder to be stopped")
            -- the lease runs out while the holder is stopped; we take it over
            local started = core.monotime()
            local l = assert(st:lock("locks/resource", { ttl = 30, timeout = 10 }))
            assert.equal(1, l.takeovers)
            assert.is_true(l:token() > token)
            assert.is_true(core.monotime() - started < 3, "the takeover took too long")
            assert.is_true((fenced.write(st, "resource", l:token(), "new holder")))

            -- the holder wakes up and writes with its old token: refused
            assert(io.open(go, "w")):close()
            helpers.kill(pid, "CONT")
            local out = child:read("*a")
            local _, _, code = helpers.pclose(child)
            closed = true
            assert.equal(0, code, out)
            assert.matches("release false lost", out)
            assert.matches("refused " .. l:token(), out)
            local value = st:get("resource")
            assert.equal(l:token(), value.Token)
            assert.equal("new holder", value.Data)

            -- the same holder writing again with its token is accepted
            local ok, index = fenced.write(st, "resource", l:token(), "again")
            assert.is_true(ok)
            assert.same({ false, l:token() }, { fenced.write(st, "resource", token, "stale") })
            assert.is_true(l:release())
            assert.is_true((st:delete("resource", index)))
        end)
    end)
end

require("spec.support.backends").each(fencing_contract, teardown)
