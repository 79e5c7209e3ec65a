-- `<close>` on what the recipes hold (Lua 5.4 syntax: this file runs on 5.4
-- only): a permit is released and an election resigned at the end of the
-- scope, also when the scope is left by an error.
local store = require "cmpxchg.store"
local Memory = require "spec.support.memory_backend"
local Sim = require "spec.support.sim"
local SimRenewal = require "spec.support.sim_renewal"

describe("recipes with <close> (unit)", function()
    local sim, backend, st, fake

    before_each(function()
        sim = Sim.new(1800000000)
        backend = Memory.new()
        st = store.new(backend)
        fake = SimRenewal.install(sim, backend)
    end)

    after_each(function()
        fake.restore()
        sim.restore()
    end)

    it("releases a permit at the end of its scope", function()
        local sem = st:semaphore("s", 1)
        do
            local permit <close> = assert(sem:acquire())
            assert.equal(1, #sem:holders())
            assert.is_true(permit:is_held())
        end
        assert.same({}, sem:holders())
        assert.has_error(function()
            local permit <close> = assert(sem:acquire())
            assert.is_true(permit:is_held())
            error("boom", 0)
        end, "boom")
        assert.same({}, sem:holders())
    end)

    it("resigns an election at the end of its scope", function()
        do
            local e <close> = st:election("leader", { id = "me" })
            assert.is_true(e:campaign())
            assert.equal("me", (e:leader()))
        end
        local observer = st:election("leader")
        assert.is_false(observer:leader())
        assert.same({ nil, 0 }, { st:get("leader") })
    end)
end)
