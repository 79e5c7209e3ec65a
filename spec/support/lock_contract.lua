--- Lock examples every backend must pass, with real time and real processes.
--   require("spec.support.lock_contract")(t, ctx)
-- ctx.open(): a fresh store; ctx.target(): the target string of that same
-- store, for child processes; ctx.name.
local core = require "cmpxchg.core"
local helpers = require "spec.helpers"

return function(t, ctx)
    local describe, it, before_each, after_each, assert =
        t.describe, t.it, t.before_each, t.after_each, t.assert

    describe("locks (" .. ctx.name .. ")", function()
        local st

        before_each(function() st = assert(ctx.open()) end)
        after_each(function()
            st:close()
            helpers.cleanup()
        end)

        it("is exclusive, gives increasing tokens and releases", function()
            local l = assert(st:lock("printers/first-floor"))
            local first = l:token()
            assert.is_true(l:is_held())
            assert.is_nil((st:lock("printers/first-floor", { timeout = 0 })))
            assert.is_true(l:release())
            local l2 = assert(st:lock("printers/first-floor", { timeout = 0 }))
            assert.is_true(l2:token() > first)
            assert.is_true(l2:release())
        end)

        it("waits for a release within its timeout", function()
            local holder = assert(st:lock("k", { ttl = 10 }))
            local started = core.monotime()
            local other = assert(helpers.open_target(ctx.target()))
            -- nobody releases: the wait must end by the deadline, not before
            local l, err, code = other:lock("k", { timeout = 0.3 })
            local waited = core.monotime() - started
            assert.is_nil(l)
            assert.equal("timeout", code)
            -- the lock's own count of its wait: not before the deadline; after it by
            -- no more than its last request took (bounded as `waited`, whatever the
            -- machine's speed: 0.40 s under ASan with a CPU hog)
            local said = tonumber(err:match("attempts in ([%d.]+) s%)$"))
            assert.is_true(said ~= nil and said >= 0.3 and said < 2, err)
            assert.is_true(waited >= 0.3 and waited < 2, "waited " .. waited)
            assert.is_true(holder:release())
            assert.truthy(other:lock("k", { timeout = 0 }))
            other:close()
        end)

        it("takes over a lease that expired", function()
            local old = assert(st:lock("k", { ttl = 0.2 }))
            local l = assert(st:lock("k", { timeout = 3 }))
            assert.equal(1, l.takeovers)
            assert.is_true(l:token() > old:token())
            assert.same({ false, "lost" }, { old:release() })
            assert.is_true(l:release())
        end)

        it("extends a lease so that nobody can take it over", function()
            local l = assert(st:lock("k", { ttl = 0.3 }))
            local before = l:token()
            assert.is_true(l:extend(30))
            assert.is_true(l:token() > before)
            core.sleep(0.35)
            assert.is_nil((st:lock("k", { timeout = 0 })))
            assert.is_true(l:release())
        end)

        it("release after the store was closed reports 'closed'", function()
            local other = assert(helpers.open_target(ctx.target()))
            local l = assert(other:lock("k", { ttl = 0.2 }))
            other:close()
            local ok, err, code = l:release()
            assert.is_nil(ok)
            assert.equal("closed", code)
            assert.matches("^closed:", err)
            assert.truthy(st:lock("k", { timeout = 3 }))   -- it expires by itself
        end)

        it("an unreleased, unreferenced lock is collected and its lease expires", function()
            local weak = setmetatable({}, { __mode = "v" })
            weak[1] = assert(st:lock("k", { ttl = 0.2 }))
            collectgarbage()
            collectgarbage()
            assert.is_nil(weak[1])
            assert.is_table((st:get("k")))           -- no I/O happened in __gc
            local l = assert(st:lock("k", { timeout = 3 }))
            assert.equal(1, l.takeovers)
        end)

        it("a holder killed with SIGKILL is taken over after its lease", function()
            local out = helpers.start("spec/support/holder.lua", { ctx.target(), "k", "1" })
            local line = out:read("*l")
            local token, pid = tostring(line):match("^held (%d+) (%d+)$")
            assert.truthy(token, "holder said: " .. tostring(line))
            helpers.kill(tonumber(pid), "KILL")
            helpers.pclose(out)
            local l = assert(st:lock("k", { timeout = 5 }))
            assert.equal(1, l.takeovers)
            assert.is_true(l:token() > tonumber(token))
            local value = st:get("k")
            assert.equal(l.owner, value.Owner)
        end)

        if ctx.auto_renew == false then
            it("refuses auto_renew clearly where it is not available", function()
                assert.has_error(function() st:lock("k", { auto_renew = true }) end)
                assert.same({ nil, 0 }, { st:get("k") })
            end)
        else
            it("auto-renew keeps the lease past its ttl, from a thread", function()
                local l = assert(st:lock("k", { ttl = 3, auto_renew = true }))
                local first = l:token()
                core.sleep(4.2)             -- time must pass: more than a ttl
                local other = assert(helpers.open_target(ctx.target()))
                assert.is_nil((other:lock("k", { timeout = 0 })))
                assert.is_true(l:is_held())
                assert.is_true(l:token() > first)
                assert.equal(l:token(), select(2, other:get("k")))
                assert.is_true(l:release())
                assert.same({ nil, 0 }, { other:get("k") })
                other:close()
            end)

            it("a renewal that finds the lease taken ends the lock and calls on_lost", function()
                local calls = {}
                local l = assert(st:lock("k", { ttl = 3, auto_renew = true,
                    on_lost = function(lk, why) calls[#calls + 1] = { lk, why } end }))
                local other = assert(helpers.open_target(ctx.target()))
                helpers.wait_until(function()      -- break it, racing the renewals
                    local _, index = other:get("k")
                    return other:delete("k", index) == true
                end, 10, "the lease deleted")
                local rival = assert(other:lock("k", { timeout = 0 }))
                helpers.wait_until(function() return not l:is_held() end, 10, "the loss seen")
                assert.equal(1, #calls)
                assert.equal(l, calls[1][1])
                assert.matches("^lost: the lease was taken over", calls[1][2])
                assert.same({ false, "lost" }, { l:release() })
                assert.equal(rival:token(), select(2, other:get("k")))   -- untouched
                assert.is_true(rival:release())
                other:close()
            end)

            it("a loss the renewer found becomes on_lost at the next call into the store", function()
                local calls = {}
                local l = assert(st:lock("k", { ttl = 3, auto_renew = true,
                    on_lost = function(_, why) calls[#calls + 1] = why end }))
                local other = assert(helpers.open_target(ctx.target()))
                helpers.wait_until(function()      -- break it, racing the renewals
                    local _, index = other:get("k")
                    return other:delete("k", index) == true
                end, 10, "the lease deleted")
                local rival = assert(other:lock("k", { timeout = 0 }))
                -- the store is called, never the lock: the hook comes all the same
                helpers.wait_until(function()
                    assert.equal(0, select(2, st:get("unrelated")))
                    return #calls > 0
                end, 10, "on_lost from a call into the store")
                assert.equal(1, #calls)
                assert.matches("^lost: the lease was taken over", calls[1])
                assert.same({ false, "lost" }, { l:release() })
                assert.is_true(rival:release())
                other:close()
            end)

            it("an unreferenced auto-renewed lock is collected, and stops renewing", function()
                local weak = setmetatable({}, { __mode = "v" })
                weak[1] = assert(st:lock("k", { ttl = 2, auto_renew = true }))
                collectgarbage()
                collectgarbage()
                assert.is_nil(weak[1])
                local l = assert(st:lock("k", { timeout = 6 }))
                assert.equal(1, l.takeovers)
            end)
        end

        it("several processes contend for one lock with zero overlaps", function()
            local procs, rounds = 6, 25
            local dir = os.tmpname()
            os.remove(dir)
            assert(os.execute("mkdir -p " .. helpers.shell_quote(dir)))
            local children = {}
            for i = 1, procs do
                children[i] = helpers.start("spec/support/contender.lua",
                    { ctx.target(), "contended", tostring(rounds), dir .. "/log." .. i,
                      dir .. "/counter" })
            end
            for i = 1, procs do
                local output = children[i]:read("*a")
                local ok = helpers.pclose(children[i])
                assert.is_true(ok, "contender " .. i .. " failed: " .. output)
            end
            -- every critical section, from every process's log
            local sections = {}
            for i = 1, procs do
                for line in io.lines(dir .. "/log." .. i) do
                    local token, t0, t1 = line:match("^(%d+) (%S+) (%S+)$")
                    sections[#sections + 1] = { token = tonumber(token),
                        t0 = tonumber(t0), t1 = tonumber(t1) }
                end
            end
            assert.equal(procs * rounds, #sections)
            table.sort(sections, function(a, b) return a.t0 < b.t0 end)
            local overlaps = 0
            for i = 2, #sections do
                if sections[i].t0 < sections[i - 1].t1 then overlaps = overlaps + 1 end
                assert.is_true(sections[i].token > sections[i - 1].token,
                    "tokens do not increase with time")
            end
            assert.equal(0, overlaps)
            -- the counter incremented inside the sections lost no update
            local f = assert(io.open(dir .. "/counter"))
            assert.equal(procs * rounds, tonumber(f:read("*a")))
            f:close()
            os.execute("rm -rf " .. helpers.shell_quote(dir))
            assert.same({ nil, 0 }, { st:get("contended") })
        end)
    end)
    -- the same with <close>, where that syntax parses (files loaded only there)
    if helpers.has_close then require("spec.support.lock_contract_54")(t, ctx) end
end
