-- The observability hooks (cmpxchg.observe, lua/cmpxchg/observe.lua): what
-- locks, permits and elections report, an observer that raises, removal; and
-- the wait seam (lua/cmpxchg/wait.lua) every waiter goes through.
local cmpxchg = require "cmpxchg"
local cluster = require "cmpxchg.cluster"
local observe = require "cmpxchg.observe"
local runtime = require "cmpxchg.runtime"
local store = require "cmpxchg.store"
local wait = require "cmpxchg.wait"
local Memory = require "spec.support.memory_backend"
local Sim = require "spec.support.sim"
local SimRenewal = require "spec.support.sim_renewal"

local WALL0 = 1800000000

describe("observers (unit)", function()
    local sim, backend, st, events, remove

    before_each(function()
        sim = Sim.new(WALL0)
        backend = Memory.new()
        st = store.new(backend)
        events = {}
        remove = cmpxchg.observe(function(event, info)
            events[#events + 1] = { event = event, info = info }
        end)
    end)

    after_each(function()
        remove()
        sim.restore()
    end)

    local function names()
        local out = {}
        for i, e in ipairs(events) do out[i] = e.event end
        return out
    end

    it("tells an acquisition, a hand-off, a release and a loss", function()
        local a = assert(st:lock("k", { ttl = 2 }))
        local b
        sim.spawn("b", function() b = assert(st:lock("k", { timeout = 10 })) end)
        assert.is_true(sim.run(10))              -- b takes a's lease over once it ended
        assert.same({ false, "lost" }, { a:release() })
        sim.now = sim.now + 0.25
        assert.is_true(b:release())
        assert.same({ "acquire", "acquire", "handoff", "lost", "release", "release" }, names())
        local acquired = events[1].info
        assert.same({ key = "k", kind = "lock", token = a:token(), waited = 0, attempts = 1,
                      writes = 1, takeover = false, fair = false }, acquired)
        local handoff = events[3].info
        assert.equal(events[2].info, handoff)
        assert.is_true(handoff.takeover)
        assert.is_true(handoff.waited >= 2)
        assert.equal("k", events[4].info.key)
        assert.matches("^lost: lock 'k' was taken over", events[4].info.reason)
        assert.same({ false, "lost" }, { events[5].info.ok, events[5].info.code })
        assert.same({ true, 0.25 }, { events[6].info.ok, events[6].info.held })
        assert.equal(b:token(), events[6].info.token)
    end)

    it("tells a failed acquisition, and marks fair ones and permits", function()
        assert(st:lock("k", { ttl = 30 }))
        assert.is_nil(st:lock("k", { timeout = 0, fair = true }))
        assert.equal("acquire_failed", events[2].event)
        assert.same({ "timeout", true, "lock" },
            { events[2].info.code, events[2].info.fair, events[2].info.kind })
        local sem = st:semaphore("s", 1)
        local p = assert(sem:acquire())
        assert.same({ "acquire", "permit", "s" }, { events[3].event, events[3].info.kind,
            events[3].info.key })
        assert.is_true(p:release())
        assert.same({ "release", "permit" }, { events[4].event, events[4].info.kind })
    end)

    it("tells renewals as the lock hears of them, and elections", function()
        local fake = SimRenewal.install(sim, backend)
        local e = st:election("leader", { ttl = 3, id = "me" })
        assert.is_true(e:campaign())
        sim.run(3.5)                 -- three renewals, a second apart
        assert.is_true(e:is_leader())
        assert.is_true(e:resign())
        fake.restore()
        assert.same({ "acquire", "elected", "renew", "release", "resigned" }, names())
        assert.equal("leader", events[1].info.kind)
        assert.same({ key = "leader", kind = "leader", token = events[1].info.token, id = "me" },
            events[2].info)
        assert.equal(3, events[3].info.renewals)
        assert.equal(3, events[3].info.new)
        assert.is_true(events[3].info.token > events[1].info.token)
    end)

    it("tells a failover from one node to the next", function()
        local calls = 0
        local r = { cluster.try_in_turn({ 2, 3, 1 }, function(i)
            calls = calls + 1
            if i == 2 then return "next", "connect: refused", "connect" end
            return "answer", "ok from " .. i
        end) }
        assert.same({ "ok from 3" }, r)
        assert.same({ "failover" }, names())
        assert.same({ from = 2, to = 3, attempt = 1, err = "connect: refused", code = "connect" },
            events[1].info)
    end)

    it("an observer that raises is reported and changes nothing", function()
        local stderr = io.stderr
        local written = {}
        -- luacheck: ignore 122
        io.stderr = { write = function(_, ...) written[#written + 1] = table.concat({ ... }) end }
        local remove_bad = cmpxchg.observe(function() error("oops") end)
        local ok, l = pcall(st.lock, st, "k")
        io.stderr = stderr      -- luacheck: ignore 122
        remove_bad()
        assert.is_true(ok)
        assert.is_truthy(l and l:is_held())
        assert.matches("cmpxchg: an observer raised: .*oops", written[1])
        assert.equal("acquire", events[1].event)
    end)

    it("is off once no observer is left", function()
        assert.is_true(observe.active)
        assert.is_true(remove())
        assert.is_false(observe.active)
        assert(st:lock("k"))
        assert.same({}, events)
        remove = function() end
        assert.has_error(function() cmpxchg.observe("f") end,
            "bad argument #1 to 'observe' (function expected, got string)")
    end)
end)

describe("the wait seam (unit)", function()
    it("is where a waiting lock, fair lock and semaphore wait, with what to watch", function()
        local sim = Sim.new(WALL0)
        local saved = wait.new
        local calls = {}
        wait.new = function(...)
            local w = saved(...)
            local change = w.change
            w.change = function(self, since, pause, left, ends, holder)
                calls[#calls + 1] = { what = self.what, kind = self.kind, since = since,
                                      ends = ends, holder = holder }
                return change(self, since, pause, left, ends, holder)
            end
            return w
        end
        local ok, err = pcall(function()
            local backend = Memory.new()
            local st = store.new(backend)
            local holder = assert(st:lock("k", { ttl = 1 }))
            assert(st:lock("k", { timeout = 5 }))
            assert.equal("k", calls[1].what)
            assert.equal("lock", calls[1].kind)
            assert.equal(holder:token(), calls[1].since)
            assert.near(holder:valid_until(), calls[1].ends, 1e-6)
            assert.equal(holder.owner, calls[1].holder.Owner)
            calls = {}
            assert(st:lock("j", { ttl = 1 }))
            assert(st:lock("j", { timeout = 5, fair = true }))
            assert.equal("j", calls[1].what)
            assert.equal("fair", calls[1].kind)
            calls = {}
            local sem = st:semaphore("s", 1)
            assert(sem:acquire({ ttl = 1 }))
            assert(sem:acquire({ timeout = 5 }))
            assert.same({ prefix = "s/permits/" }, calls[1].what)
            assert.equal("permits", calls[1].kind)
            assert.is_true(runtime.monotime() > 2)
        end)
        wait.new = saved
        sim.restore()
        assert(ok, err)
    end)
end)
