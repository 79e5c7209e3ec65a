--- The recipes built on locks, as every backend must run them, with real
-- time and real processes (the exact interleavings are the unit specs' on
-- simulated clients; the torture spec runs semaphores under kills and stops):
--   require("spec.support.recipes_contract")(t, ctx)
-- ctx as lock_contract's: open(), target(), name.
local core = require "cmpxchg.core"
local helpers = require "spec.helpers"

return function(t, ctx)
    local describe, it, before_each, after_each, assert =
        t.describe, t.it, t.before_each, t.after_each, t.assert

    --- A child (spec/support/recipe_child.lua) and its first line.
    local function child(args)
        local out = helpers.start("spec/support/recipe_child.lua", args)
        return out, out:read("*l")
    end

    describe("recipes (" .. ctx.name .. ")", function()
        local st

        before_each(function() st = assert(ctx.open()) end)
        after_each(function()
            st:close()
            helpers.cleanup()
        end)

        it("a semaphore holds n permits at most, and takes a dead holder's over", function()
            local sem = st:semaphore("exports", 2, { ttl = 1 })
            local out, line = child({ "permit", ctx.target(), "exports", "2", "1" })
            local token, slot, pid = tostring(line):match("^held (%d+) (%d+) (%d+)$")
            assert.truthy(token, "child said: " .. tostring(line))
            local mine = assert(sem:acquire({ timeout = 0, ttl = 30 }))
            assert.is_true(mine.slot ~= tonumber(slot))
            assert.equal(2, #sem:holders())
            local none, _, code = sem:acquire({ timeout = 0 })
            assert.is_nil(none)
            assert.equal("timeout", code)
            helpers.kill(tonumber(pid), "KILL")
            helpers.pclose(out)
            -- the dead child's permit, once its lease is over
            local p = assert(sem:acquire({ timeout = 5 }))
            assert.equal(tonumber(slot), p.slot)
            assert.equal(1, p.takeovers)
            assert.is_true(p:token() > tonumber(token))
            assert.is_true(p:release())
            assert.is_true(mine:release())
            assert.same({}, sem:holders())
        end)

        if ctx.auto_renew ~= false then
            it("an auto-renewed permit outlives its ttl", function()
                local sem = st:semaphore("s", 1, { ttl = 1, auto_renew = true })
                local p = assert(sem:acquire())
                local first = p:token()
                core.sleep(1.4)
                local other = assert(helpers.open_target(ctx.target()))
                assert.is_nil((other:semaphore("s", 1):acquire({ timeout = 0 })))
                assert.is_true(p:is_held())
                assert.is_true(p:token() > first)
                assert.is_true(p:release())
                other:close()
            end)
        end

        it("a fair lock is taken in the order the waiters came, a dead waiter skipped", function()
            local holder = assert(st:lock("k", { ttl = 30 }))
            local waiters = {}
            local function queued()
                local n = 0
                for _, item in ipairs(assert(st:list("k/waiters/"))) do
                    if type(item.value) == "table" and item.value.ExpiresAt then n = n + 1 end
                end
                return n
            end
            -- one after the other: each is in the queue before the next starts
            for i = 1, 4 do
                local out, line = child({ "fair", ctx.target(), "k", "0.05", "1" })
                waiters[i] = { out = out, pid = tonumber(tostring(line):match("^pid (%d+)$")) }
                assert.truthy(waiters[i].pid, "child said: " .. tostring(line))
                helpers.wait_until(function() return queued() == i end, 20, "waiter " .. i)
            end
            -- the second dies in the queue: it must hold nobody up for long
            helpers.kill(waiters[2].pid, "KILL")
            helpers.pclose(waiters[2].out)
            assert.is_true(holder:release())
            local got = {}
            for _, i in ipairs({ 1, 3, 4 }) do
                local line = waiters[i].out:read("*l")
                local token, at = tostring(line):match("^got (%d+) (%S+)$")
                assert.truthy(token, "waiter " .. i .. " said: " .. tostring(line))
                got[#got + 1] = { i = i, token = tonumber(token), at = tonumber(at) }
                assert.is_true(helpers.pclose(waiters[i].out))
            end
            assert.is_true(got[1].at < got[2].at and got[2].at < got[3].at)
            assert.is_true(got[1].token < got[2].token and got[2].token < got[3].token)
            helpers.wait_until(function() return queued() == 0 end, 10, "the queue to empty")
            assert.same({ nil, 0 }, { st:get("k") })
        end)

        if ctx.auto_renew ~= false then
            it("elects one leader, which anyone reads, and fails over after a kill", function()
                local mine = st:election("leader", { ttl = 1, id = "parent" })
                assert.is_false(mine:leader())
                local out, line = child({ "lead", ctx.target(), "leader", "1" })
                local token, pid = tostring(line):match("^elected (%d+) (%d+)$")
                assert.truthy(token, "child said: " .. tostring(line))
                local id, info = mine:leader()
                assert.equal("child-" .. pid, id)
                assert.equal(tonumber(pid), info.pid)
                assert.is_nil((mine:campaign(0)))
                core.sleep(1.2)                  -- past its ttl: its renewals keep it
                assert.equal("child-" .. pid, (mine:leader()))
                local killed = core.monotime()
                helpers.kill(tonumber(pid), "KILL")
                helpers.pclose(out)
                assert.is_true(mine:campaign(10))
                local failover = core.monotime() - killed
                -- ttl after its last renewal (a renewal is ttl/3 apart): a
                -- generous bound, for a loaded machine
                assert.is_true(failover < 1 + 1 / 3 + 2, "failover took " .. failover)
                assert.is_true(mine:token() > tonumber(token))
                assert.equal("parent", (mine:leader()))
                assert.is_true(mine:resign())
                assert.is_false(mine:leader())
            end)
        end
    end)
end
