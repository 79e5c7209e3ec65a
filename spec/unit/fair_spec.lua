-- Fair waiting (lua/cmpxchg/queue.lua) on the scripted memory backend, with
-- several simulated clients on one fake clock (spec/support/sim.lua): the
-- order in which waiters get the lock, dead and stopped waiters, the cost of
-- an uncontended fair lock, unknown outcomes of the queue's own writes.
local runtime = require "cmpxchg.runtime"
local store = require "cmpxchg.store"
local Memory = require "spec.support.memory_backend"
local Sim = require "spec.support.sim"

local WALL0 = 1800000000

describe("fair locks (unit, simulated clients)", function()
    local sim, backend, st

    before_each(function()
        sim = Sim.new(WALL0)
        backend = Memory.new()
        st = store.new(backend)
    end)

    after_each(function() sim.restore() end)

    local function waiters_left()
        return #st:list("k/waiters/")
    end

    --- A client that arrives at `at`, takes "k" (fair or not), holds it
    -- `hold` seconds and releases; `got` records the order of acquisition.
    local function client(name, at, hold, got, opts)
        return sim.spawn(name, function()
            runtime.sleep(at)
            local l, err = st:lock("k", opts or { fair = true, timeout = 120, ttl = 30 })
            assert(l, err)
            got[#got + 1] = { name = name, at = sim.now, waited = l.waited }
            runtime.sleep(hold)
            assert(l:release())
        end)
    end

    it("gives the lock in the order the waiters came", function()
        local got = {}
        client("holder", 0, 1, got)
        for i = 1, 6 do client("w" .. i, 0.01 * i, 0.05, got) end
        assert.is_true(sim.run(60))
        local names = {}
        for i, g in ipairs(got) do names[i] = g.name end
        assert.same({ "holder", "w1", "w2", "w3", "w4", "w5", "w6" }, names)
        assert.equal(0, waiters_left())
        assert.same({ nil, 0 }, { st:get("k") })
    end)

    it("costs a list and a put when nobody waits, and leaves no entry", function()
        local l = assert(st:lock("k", { fair = true }))
        assert.equal(1, backend:count("list"))
        assert.equal(1, backend:count("put"))
        assert.equal(2, backend:count())
        assert.equal(0, waiters_left())
        assert.is_true(l:release())
    end)

    it("with timeout = 0 never joins, and never goes before a waiter", function()
        local got = {}
        client("holder", 0, 1, got)
        client("w1", 0.01, 0.05, got)
        local probe
        sim.spawn("probe", function()
            runtime.sleep(1.0001)      -- just after the release
            probe = { st:lock("k", { fair = true, timeout = 0 }) }
        end)
        assert.is_true(sim.run(60))
        -- w1 was queued when the lock came free: the try-once went away
        assert.is_nil(probe[1])
        assert.equal("timeout", probe[3])
        assert.matches("1 waiter ahead", probe[2])
        assert.equal("w1", got[2].name)
    end)

    it("a dead waiter holds the queue up for at most waiter_ttl", function()
        local got = {}
        client("holder", 0, 0.5, got)
        local dead = client("dead", 0.01, 0.05, got, { fair = true, timeout = 120, waiter_ttl = 3 })
        client("w2", 0.02, 0.05, got, { fair = true, timeout = 120, waiter_ttl = 3 })
        -- the dead waiter joins the queue, then is killed while it waits
        sim.spawn("killer", function()
            runtime.sleep(0.2)
            assert.equal(2, waiters_left())
            sim.kill(dead)
        end)
        assert.is_true(sim.run(60))
        assert.equal("w2", got[2].name)
        -- its entry's time ends 3 s after its last write (joined at ~0.01 s)
        assert.is_true(got[2].at > 3 and got[2].at < 3.5, "w2 got it at " .. got[2].at)
        assert.equal(0, waiters_left())        -- the dead entry was swept
    end)

    it("a waiter stopped past its entry's end joins again at the back", function()
        local got = {}
        client("holder", 0, 6, got)
        local slow = client("slow", 0.01, 0.05, got, { fair = true, timeout = 120, waiter_ttl = 2 })
        client("w2", 0.02, 0.05, got, { fair = true, timeout = 120, waiter_ttl = 2 })
        sim.spawn("stopper", function()
            runtime.sleep(0.3)
            sim.stop(slow, 4)       -- SIGSTOP for 4 s: its entry (2 s) runs out meanwhile
        end)
        assert.is_true(sim.run(60))
        local names = {}
        for i, g in ipairs(got) do names[i] = g.name end
        assert.same({ "holder", "w2", "slow" }, names)
        assert.equal(0, waiters_left())
    end)

    it("renews its entry while it waits, so a long wait keeps its place", function()
        local got = {}
        client("holder", 0, 8, got)
        client("w1", 0.01, 0.05, got, { fair = true, timeout = 120, waiter_ttl = 1 })
        client("w2", 0.02, 0.05, got, { fair = true, timeout = 120, waiter_ttl = 1 })
        assert.is_true(sim.run(60))
        assert.same({ "holder", "w1", "w2" }, { got[1].name, got[2].name, got[3].name })
        -- the entries were written again about every waiter_ttl/3 for 8 s
        local renewals = 0
        for _, c in ipairs(backend.calls) do
            if c.method == "put" and c[1]:find("/waiters/", 1, true) and c[3] ~= 0 then
                renewals = renewals + 1
            end
        end
        assert.is_true(renewals >= 2 * 8 / (1 / 3) - 4, renewals .. " renewals")
        -- and while the queue stood still, they looked no more often than
        -- plain waiters do (backoff up to backoff_max: 0.1 s)
        assert.is_true(backend:count("list") <= 2 * 8 / 0.05 * 1.3, backend:count("list") .. " lists")
    end)

    it("a queue entry whose write's answer was lost is taken as ours, never a ghost", function()
        local got = {}
        client("holder", 0, 1, got)
        local put = backend.put
        local failed = 0
        backend.put = function(self, key, ...)
            if failed == 0 and key:find("/waiters/", 1, true) then
                failed = 1
                put(self, key, ...)      -- applied, and the answer lost
                return nil, "timeout: the answer was lost", "timeout"
            end
            return put(self, key, ...)
        end
        client("w1", 0.01, 0.05, got)
        client("w2", 0.02, 0.05, got)
        assert.is_true(sim.run(60))
        assert.equal(1, failed)
        assert.same({ "holder", "w1", "w2" }, { got[1].name, got[2].name, got[3].name })
        assert.is_true(got[3].at < 1.5, "w2 waited behind a ghost: " .. got[3].at)
        assert.equal(0, waiters_left())
    end)

    it("waits out a store that cannot be reached, and returns a final error at once", function()
        backend:fail_next("list", "connect: refused", "connect")
        local l = assert(st:lock("k", { fair = true, timeout = 5 }))
        assert.is_true(l:release())
        backend:fail_next("list", "auth: no", "auth")
        local ok, err, code = st:lock("k", { fair = true, timeout = 5 })
        assert.is_nil(ok)
        assert.equal("auth", code)
        assert.equal("auth: no", err)
        assert.equal(0, waiters_left())
    end)

    it("times out with the holder and the queue in the message, and leaves the queue", function()
        local got = {}
        client("holder", 0, 10, got)
        local r
        sim.spawn("w", function()
            runtime.sleep(0.01)
            r = { st:lock("k", { fair = true, timeout = 1 }) }
        end)
        assert.is_true(sim.run(60))
        assert.is_nil(r[1])
        assert.equal("timeout", r[3])
        assert.matches("^timeout: lock 'k' is held by .+ 0 waiters ahead %(fair; %d+ attempts", r[2])
        assert.is_true(r[4].waited >= 1)
        assert.equal(0, waiters_left())
    end)

    it("checks its options as store:lock does", function()
        assert.has_error(function() st:lock("k", { fair = "yes" }) end,
            "bad argument #2 to 'lock' (fair must be a boolean)")
        assert.has_error(function() st:lock("k", { fair = true, waiter_ttl = 0 }) end)
        assert.has_error(function() st:lock("k", { fair = true, bogus = 1 }) end,
            "bad argument #2 to 'lock' (unknown option 'bogus')")
        assert.equal(0, backend:count())
    end)
end)
