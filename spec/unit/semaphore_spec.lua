-- Semaphores (lua/cmpxchg/semaphore.lua) on the scripted memory backend with
-- simulated clients on one fake clock (spec/support/sim.lua): N permits and no
-- more, whatever the clients do; takeover of a dead holder's permit; fair
-- waiting; the argument checks.
local cmpxchg = require "cmpxchg"
local runtime = require "cmpxchg.runtime"
local store = require "cmpxchg.store"
local Memory = require "spec.support.memory_backend"
local Sim = require "spec.support.sim"

local WALL0 = 1800000000

describe("semaphores (unit, simulated clients)", function()
    local sim, backend, st

    before_each(function()
        sim = Sim.new(WALL0)
        backend = Memory.new()
        st = store.new(backend)
    end)

    after_each(function() sim.restore() end)

    it("hands out n permits, each a lock with its own token, and no more", function()
        local sem = st:semaphore("exports", 3, { ttl = 10 })
        assert.equal("semaphore", cmpxchg.type(sem))
        local permits, slots, tokens = {}, {}, {}
        for i = 1, 3 do
            permits[i] = assert(sem:acquire({ timeout = 0 }))
            assert.equal("lock", cmpxchg.type(permits[i]))
            slots[permits[i].slot] = true
            tokens[permits[i]:token()] = true
        end
        assert.same({ true, true, true }, slots)
        local n = 0
        for _ in pairs(tokens) do n = n + 1 end
        assert.equal(3, n)
        local p, err, code, stats = sem:acquire({ timeout = 0 })
        assert.is_nil(p)
        assert.equal("timeout", code)
        assert.matches("^timeout: semaphore 'exports' has no free permit of 3", err)
        assert.equal(1, stats.attempts)
        assert.equal(3, #sem:holders())
        assert.is_true(permits[2]:release())
        assert.equal(2, #sem:holders())
        local again = assert(sem:acquire({ timeout = 0 }))
        assert.equal(permits[2].slot, again.slot)
        assert.is_true(again:token() > permits[2]:token())
        for _, q in ipairs({ permits[1], permits[3], again }) do assert.is_true(q:release()) end
        assert.same({}, sem:holders())
        assert.same({}, st:list("exports/"))
    end)

    it("takes over the permit of a holder whose lease ran out", function()
        local sem = st:semaphore("s", 1)
        local dead = assert(sem:acquire({ ttl = 2 }))
        local p
        sim.spawn("waiter", function() p = assert(sem:acquire({ timeout = 10 })) end)
        assert.is_true(sim.run(60))
        assert.equal(1, p.takeovers)
        assert.is_true(sim.now >= 2 and sim.now < 2.01, "taken over at " .. sim.now)
        assert.same({ false, "lost" }, { dead:release() })
        assert.is_true(p:release())
    end)

    it("takes a dead holder's permit before a free one; holders() lists valid permits only", function()
        local sem = st:semaphore("s", 3)
        local dead = assert(sem:acquire({ ttl = 2, timeout = 0 }))
        assert.equal(1, #sem:holders())
        sim.spawn("time", function() runtime.sleep(3) end)     -- past the dead lease
        assert.is_true(sim.run(60))
        assert.same({}, sem:holders())          -- over: no longer a holder
        -- two permits were never taken and one is a dead holder's: that one
        -- first, so that permits held by the dead come back before they expire
        for _ = 1, 5 do
            local p = assert(sem:acquire({ timeout = 0 }))
            assert.equal(dead.slot, p.slot)
            assert.equal(1, p.takeovers)
            sim.spawn("time", function() runtime.sleep(p.options.ttl + 1) end)
            assert.is_true(sim.run(600))
        end
    end)

    it("with_permit fails with lost when the permit was taken over while the body ran", function()
        local sem = st:semaphore("w", 1)
        local result = { sem:with_permit({ timeout = 0 }, function()
            -- an operator breaks the permit and a rival takes it (no waiting:
            -- a body that yields cannot run under Lua 5.1's pcall)
            local _, index = st:get(sem.keys[1])
            assert.is_true((st:delete(sem.keys[1], index)))
            assert(st:lock(sem.keys[1], { timeout = 0 }))
            return "done"
        end) }
        assert.same({ nil, "lost: permit 1 of semaphore 'w' was taken over while held", "lost" },
            result)
    end)

    it("never has more than n valid permits while clients come, go and die", function()
        local n, sections = 3, {}
        local sem = st:semaphore("pool", n, { ttl = 1, timeout = 120 })
        local clients, holding, takeovers, kills = {}, {}, 0, 0
        for c = 1, 8 do
            clients[c] = sim.spawn("c" .. c, function()
                for _ = 1, 12 do
                    local p = assert(sem:acquire())
                    takeovers = takeovers + p.takeovers
                    local s = { t0 = sim.now, t1 = p.valid_mono, slot = p.slot, token = p:token() }
                    sections[#sections + 1] = s
                    holding[c] = s
                    runtime.sleep(runtime.random() * 0.3)
                    s.t1 = math.min(s.t1, sim.now)
                    holding[c] = nil
                    assert(p:release())
                    runtime.sleep(runtime.random() * 0.05)
                end
            end)
        end
        -- three holders die holding their permit (its lease then runs to its
        -- end), at points spread over the run
        sim.spawn("killer", function()
            for _, at in ipairs({ 0.5, 1.5, 2.5 }) do
                runtime.sleep(at - sim.now)
                for c, client in ipairs(clients) do
                    if not client.done and holding[c] then
                        sim.kill(client)
                        kills = kills + 1
                        break
                    end
                end
            end
        end)
        assert.is_true(sim.run(600))
        assert.equal(3, kills)
        assert.is_true(takeovers >= 3, takeovers .. " takeovers")
        local events = {}
        for _, s in ipairs(sections) do
            events[#events + 1] = { t = s.t0, d = 1 }
            events[#events + 1] = { t = s.t1, d = -1 }
        end
        table.sort(events, function(a, b)
            if a.t ~= b.t then return a.t < b.t end
            return a.d < b.d        -- a release before an acquisition at the same instant
        end)
        local inside, most = 0, 0
        for _, e in ipairs(events) do
            inside = inside + e.d
            most = math.max(most, inside)
        end
        assert.is_true(#sections > 60, #sections .. " sections")
        assert.equal(n, most)       -- reached, never passed
        -- per permit: one valid lease at a time, tokens rising
        local by_slot = {}
        for _, s in ipairs(sections) do
            by_slot[s.slot] = by_slot[s.slot] or {}
            table.insert(by_slot[s.slot], s)
        end
        for slot, list in pairs(by_slot) do
            table.sort(list, function(a, b) return a.t0 < b.t0 end)
            for i = 2, #list do
                assert.is_true(list[i].t0 >= list[i - 1].t1, "overlap on permit " .. slot)
                assert.is_true(list[i].token > list[i - 1].token)
            end
        end
    end)

    it("with fair = true, hands permits out in the order the waiters came (mostly)", function()
        local sem = st:semaphore("s", 2, { fair = true, timeout = 60, ttl = 30 })
        local got = {}
        local function client(name, at, hold)
            sim.spawn(name, function()
                runtime.sleep(at)
                local p = assert(sem:acquire())
                got[#got + 1] = name
                runtime.sleep(hold)
                assert(p:release())
            end)
        end
        client("h1", 0, 1)
        client("h2", 0, 1.5)
        for i = 1, 6 do client("w" .. i, 0.01 * i, 0.2) end
        assert.is_true(sim.run(60))
        -- in arrival order, but the waiters among the first `free` may race for
        -- the free permits: none gets one more than n - 1 places off its own
        local arrival = { "h1", "h2", "w1", "w2", "w3", "w4", "w5", "w6" }
        assert.equal(#arrival, #got)
        for i, name in ipairs(arrival) do
            local at
            for j, g in ipairs(got) do if g == name then at = j end end
            assert.is_true(math.abs(at - i) < 2, ("%s came %d and got %d: %s"):format(name, i,
                at, table.concat(got, " ")))
        end
        assert.same({}, st:list("s/waiters/"))
    end)

    it("with_permit releases after the body, also when it raises", function()
        local sem = st:semaphore("s", 1)
        assert.same({ true, 42, "x" }, { sem:with_permit(nil, function(a) return a, "x" end, 42) })
        assert.has_error(function()
            sem:with_permit({ timeout = 0 }, function() error("boom", 0) end)
        end, "boom")
        assert.same({}, sem:holders())
        local p = assert(sem:acquire())
        local ok, err, code = sem:with_permit({ timeout = 0 }, function() return 1 end)
        assert.is_nil(ok)
        assert.equal("timeout", code)
        assert.matches("no free permit", err)
        assert.is_true(p:release())
    end)

    it("raises on misuse, before any request", function()
        assert.has_error(function() st:semaphore("s", 0) end,
            "bad argument #2 to 'semaphore' (n must be an integer from 1 to 256, got 0)")
        assert.has_error(function() st:semaphore("s", 1.5) end)
        assert.has_error(function() st:semaphore("s", 257) end)
        assert.has_error(function() st:semaphore("", 2) end)
        assert.has_error(function() st:semaphore(("x"):rep(505), 2) end)
        assert.has_error(function() st:semaphore("s", 2, { bogus = true }) end,
            "bad argument #3 to 'semaphore' (unknown option 'bogus')")
        local sem = st:semaphore("s", 2)
        assert.has_error(function() sem:acquire({ ttl = -1 }) end)
        assert.has_error(function() sem.acquire({}) end,
            "bad argument #1 to 'acquire' (cmpxchg.Semaphore expected, got table)")
        assert.has_error(function() sem:with_permit(nil, "fn") end)
        assert.equal(0, backend:count())
        assert.equal("cmpxchg.Semaphore (s, 2 permits)", tostring(sem))
    end)

    it("returns a final store error at once and waits out a transient one", function()
        local sem = st:semaphore("s", 2)
        backend:fail_next("get_many", "connect: refused", "connect")
        local p = assert(sem:acquire({ timeout = 5 }))
        assert.is_true(p:release())
        backend:fail_next("get_many", "auth: denied", "auth")
        local ok, err, code = sem:acquire({ timeout = 5 })
        assert.is_nil(ok)
        assert.same({ "auth: denied", "auth" }, { err, code })
    end)
end)
