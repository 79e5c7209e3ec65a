-- Leader election (lua/cmpxchg/election.lua) on the scripted memory backend
-- with simulated candidates on one fake clock, their leases renewed by
-- simulated renewers (spec/support/sim_renewal.lua): who leads, the tokens of
-- the terms, a leader's death and the failover bound (ttl after the last
-- renewal), resigning, losing, and the checks.
local cmpxchg = require "cmpxchg"
local runtime = require "cmpxchg.runtime"
local store = require "cmpxchg.store"
local Memory = require "spec.support.memory_backend"
local Sim = require "spec.support.sim"
local SimRenewal = require "spec.support.sim_renewal"

local WALL0 = 1800000000

describe("elections (unit, simulated candidates)", function()
    local sim, backend, st, fake

    before_each(function()
        sim = Sim.new(WALL0)
        backend = Memory.new()
        st = store.new(backend)
        fake = SimRenewal.install(sim, backend)
    end)

    after_each(function()
        fake.restore()
        sim.restore()
    end)

    it("elects one candidate, whom anyone can read, with a token per term", function()
        local elected = {}
        local a = st:election("jobs/cleanup", { id = "a", ttl = 6,
            on_elected = function(e, token) elected[#elected + 1] = { e.id, token } end })
        assert.equal("election", cmpxchg.type(a))
        assert.is_false(a:leader())
        assert.is_false(a:is_leader())
        assert.is_nil(a:token())
        assert.is_true(a:campaign())
        assert.is_true(a:campaign())            -- already leading: nothing more
        assert.equal(1, backend:count("put"))
        assert.same({ { "a", a:token() } }, elected)
        local observer = st:election("jobs/cleanup")
        local id, info = observer:leader()
        assert.equal("a", id)
        assert.equal(a:token(), info.token)
        assert.equal(runtime.pid(), info.pid)
        assert.equal(WALL0 + 6, info.expires_at)
        -- a follower's look costs a read, never a write
        local b = st:election("jobs/cleanup", { id = "b" })
        local puts = backend:count("put")
        local ok, err, code = b:campaign(0)
        assert.is_nil(ok)
        assert.equal("timeout", code)
        assert.matches("^timeout: election 'jobs/cleanup' is led by a@", err)
        assert.equal(puts, backend:count("put"))
        assert.equal(WALL0 + 6, b.seen_until)
        -- the next term's token is above every index of this one
        local first = a:token()
        assert.is_true(a:resign())
        assert.is_false(a:is_leader())
        assert.is_true(a:resign())              -- not leading: nothing to do
        assert.is_true(b:campaign(0))
        assert.is_true(b:token() > first)
        assert.is_true(b:resign())
    end)

    it("moves to the next candidate within a ttl of the dead leader's last renewal", function()
        local ttl = 3
        local terms = {}
        local function candidate(name, at)
            local c
            c = sim.spawn(name, function()
                runtime.sleep(at)
                local e = st:election("leader", { id = name, ttl = ttl,
                    on_elected = function(_, token)
                        terms[#terms + 1] = { id = name, token = token, at = sim.now }
                    end })
                assert(e:campaign())
                c.election = e
                while e:is_leader() do runtime.sleep(0.5) end
            end)
            return c
        end
        local a = candidate("a", 0)
        candidate("b", 0.1)
        candidate("c", 0.2)
        local killed_at, last_renewal, reads_before_kill, puts_before_kill
        sim.spawn("killer", function()
            runtime.sleep(10)
            killed_at = sim.now
            reads_before_kill = backend:count("get")
            puts_before_kill = backend:count("put")
            local _, index = st:get("leader")
            last_renewal = fake.renewers[a.election.leading].rec
            assert.equal(index, last_renewal.index)
            sim.kill(a)
            fake.kill(a.election.leading)
        end)
        sim.run(30)
        assert.equal(2, #terms)
        assert.equal("a", terms[1].id)
        assert.is_true(terms[2].token > terms[1].token)
        local failover = terms[2].at - killed_at
        -- the lease ran ttl from the last renewal's write; the next look was
        -- just after it ended: at most a ttl, and never before the lease ended
        local lease_end = last_renewal.valid
        assert.is_true(terms[2].at >= lease_end, "taken before the lease ended")
        assert.is_true(terms[2].at <= lease_end + 0.01, "taken " .. terms[2].at - lease_end
            .. " s after the lease ended")
        assert.is_true(failover <= ttl + ttl / 3, "failover took " .. failover)
        -- while a led, its two followers looked every 0.5 s on average (full
        -- jitter up to backoff_max = 1 s) after the backoff's first 8 steps:
        -- about 2 * (10 / 0.5 + 8) reads, never a write
        assert.is_true(reads_before_kill <= 70, reads_before_kill .. " reads")
        assert.equal(1 + last_renewal.renewals, puts_before_kill)   -- a's own writes only
    end)

    it("a leader whose renewals died has no token, and leads nobody, once its lease is over", function()
        local a = st:election("leader", { id = "a", ttl = 3 })
        assert.is_true(a:campaign())
        local observer = st:election("leader")
        assert.equal("a", (observer:leader()))
        fake.kill(a.leading)                    -- its renewals die; it does not know
        sim.spawn("time", function() runtime.sleep(3.5) end)
        assert.is_true(sim.run(60))
        assert.is_nil(a:token())                -- asked first: it finds out here
        assert.is_false(a:is_leader())
        assert.is_false(observer:leader())      -- its lease is over: nobody leads
    end)

    it("tells on_lost when the renewals find the leadership taken", function()
        local lost = {}
        local a = st:election("leader", { id = "a", ttl = 3,
            on_lost = function(e, why) lost[#lost + 1] = { e, why } end })
        assert.is_true(a:campaign())
        local _, index = st:get("leader")
        assert.is_true(st:delete("leader", index))           -- an operator breaks it
        local b = st:election("leader", { id = "b", ttl = 3 })
        assert.is_true(b:campaign(0))
        sim.spawn("watch", function()
            while a:is_leader() do runtime.sleep(0.1) end
        end)
        sim.run(10)
        assert.equal(1, #lost)
        assert.equal(a, lost[1][1])
        assert.matches("^lost:", lost[1][2])
        assert.is_nil(a:token())
        assert.same({ false, "lost" }, { a:resign() })
        assert.is_true(b:is_leader())
        assert.is_true(b:resign())
    end)

    it("with_leadership leads for the body and resigns, also when it raises", function()
        local e = st:election("leader", { ttl = 3 })
        assert.same({ true, "done", 7 }, { e:with_leadership(function(x)
            assert.is_true(e:is_leader())
            return "done", x
        end, 7) })
        assert.is_false(e:is_leader())
        assert.same({ nil, 0 }, { st:get("leader") })
        assert.has_error(function()
            e:with_leadership(function() error("boom", 0) end)
        end, "boom")
        assert.same({ nil, 0 }, { st:get("leader") })
    end)

    it("times out a campaign while another leads", function()
        local a = st:election("leader", { ttl = 30 })
        assert.is_true(a:campaign())
        local r
        sim.spawn("b", function() r = { st:election("leader"):campaign(2) } end)
        sim.run(5)
        assert.is_nil(r[1])
        assert.equal("timeout", r[3])
        assert.is_true(a:resign())
    end)

    it("raises on misuse, before any request", function()
        assert.has_error(function() st:election("") end)
        assert.has_error(function() st:election("x", { owner = "me" }) end,
            "bad argument #2 to 'election' (unknown option 'owner')")
        assert.has_error(function() st:election("x", { auto_renew = false }) end,
            "bad argument #2 to 'election' (unknown option 'auto_renew')")
        assert.has_error(function() st:election("x", { id = "" }) end,
            "bad argument #2 to 'election' (id must not be empty)")
        assert.has_error(function() st:election("x", { id = 5 }) end,
            "bad argument #2 to 'election' (id must be a string)")
        assert.has_error(function() st:election("x", { ttl = 0 }) end)
        local e = st:election("x", { backoff_min = 2 })        -- raises the default max
        assert.equal(2, e.checked.backoff_max)
        assert.has_error(function() e:campaign(-1) end)
        assert.has_error(function() e.campaign({}) end,
            "bad argument #1 to 'campaign' (cmpxchg.Election expected, got table)")
        assert.equal(0, backend:count())
        assert.equal("cmpxchg.Election (x, not leading)", tostring(e))
    end)
end)
