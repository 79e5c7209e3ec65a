-- cmpxchg.leader_job (lua/cmpxchg/leader_job.lua) under a stand-in `ngx`
-- whose timers are simulated clients on one fake clock (spec/support/sim.lua):
-- several "workers" run the job's timer chains against one store; exactly one
-- runs the job, every `every` seconds, and when it dies another takes over
-- within a ttl of its last renewal. (The real thing, two nginx hosts with two
-- workers each: spec/integration/nginx_leader_spec.lua.)
local runtime = require "cmpxchg.runtime"
local store = require "cmpxchg.store"
local Memory = require "spec.support.memory_backend"
local Sim = require "spec.support.sim"
local SimRenewal = require "spec.support.sim_renewal"

local WALL0 = 1800000000

describe("leader_job (unit, simulated workers)", function()
    local sim, backend, fake, leader_job, logged, current_worker

    before_each(function()
        sim = Sim.new(WALL0)
        backend = Memory.new()
        fake = SimRenewal.install(sim, backend)
        logged = {}
        -- each worker's timers are clients named after it, so killing a worker
        -- kills its timers
        rawset(_G, "ngx", {
            ERR = 4, WARN = 5,
            log = function(level, msg) logged[#logged + 1] = { level, msg } end,
            timer = { at = function(delay, fn, arg)
                local worker = current_worker
                local c = sim.spawn(worker, function()
                    current_worker = worker
                    runtime.sleep(delay)
                    current_worker = worker
                    fn(false, arg)
                end)
                c.worker = worker
                return true
            end },
        })
        runtime.nginx = true
        package.loaded["cmpxchg.leader_job"] = nil
        leader_job = require "cmpxchg.leader_job"
    end)

    after_each(function()
        runtime.nginx = false
        rawset(_G, "ngx", nil)
        package.loaded["cmpxchg.leader_job"] = nil
        fake.restore()
        sim.restore()
    end)

    local function kill_worker(name)
        for _, c in ipairs(sim.clients) do
            if c.worker == name and not c.done then sim.kill(c) end
        end
        for l, r in pairs(fake.renewers) do
            if l.owner == name then sim.kill(r.client) end
        end
    end

    it("runs the job on one worker every `every` s, and moves it when that worker dies", function()
        local runs = {}
        local jobs = {}
        for w = 1, 3 do
            current_worker = "w" .. w
            jobs[w] = leader_job.start("jobs/purge", {
                store = function() return store.new(backend) end,
                every = 1, ttl = 3, id = "w" .. w,
            }, function(e)
                runs[#runs + 1] = { worker = e.id, at = sim.now, token = e:token() }
            end)
        end
        local killed_at, victim
        sim.spawn("killer", function()
            runtime.sleep(5.5)
            killed_at = sim.now
            victim = runs[#runs].worker
            kill_worker(victim)
        end)
        sim.run(12)
        assert.same({}, logged)
        -- one worker ran it once a second until it died, then another
        local before, after = {}, {}
        for _, r in ipairs(runs) do
            local t = r.at < killed_at and before or after
            t[#t + 1] = r
        end
        assert.is_true(#before >= 5 and #before <= 7, #before .. " runs before the kill")
        for i = 2, #before do
            assert.equal(before[1].worker, before[i].worker)
            assert.is_true(math.abs(before[i].at - before[i - 1].at - 1) < 1e-9)
        end
        assert.is_true(#after >= 2)
        assert.is_true(after[1].worker ~= victim)
        for i = 2, #after do assert.equal(after[1].worker, after[i].worker) end
        assert.is_true(after[1].token > before[#before].token)
        local failover = after[1].at - killed_at
        assert.is_true(failover <= 3 + 1, "failover took " .. failover .. " s")
        local living = 0
        for w = 1, 3 do
            if jobs[w].election and jobs[w]:is_leader() then living = living + 1 end
        end
        assert.equal(1, living)
    end)

    it("a job that raises is logged and runs again next time", function()
        local n = 0
        current_worker = "w1"
        leader_job.start("j", { store = store.new(backend), every = 1, ttl = 3 }, function()
            n = n + 1
            error("failing job " .. n)
        end)
        sim.run(2.5)
        assert.equal(3, n)
        assert.equal(3, #logged)
        assert.matches("cmpxchg.leader_job: 'j': the job raised: .*failing job 1", logged[1][2])
    end)

    it("stop() resigns, so the next worker need not wait for the lease", function()
        local runs = {}
        current_worker = "w1"
        local a = leader_job.start("j", { store = store.new(backend), every = 1, ttl = 30,
            id = "a" }, function(e) runs[#runs + 1] = e.id end)
        current_worker = "w2"
        leader_job.start("j", { store = store.new(backend), every = 1, ttl = 30, id = "b",
            retry = 0.5 }, function(e) runs[#runs + 1] = e.id end)
        sim.spawn("stopper", function()
            runtime.sleep(2.2)
            assert.is_true(a:stop())
        end)
        sim.run(6)
        assert.same({ "a", "a", "a", "b", "b", "b", "b" }, runs)
    end)

    it("checks its arguments, and outside nginx says where it runs", function()
        local s = store.new(backend)
        assert.has_error(function() leader_job.start("j", { store = s }, print) end,
            "bad argument #2 to 'leader_job' (every must be a positive number of seconds)")
        assert.has_error(function() leader_job.start("j", { every = 1 }, print) end,
            "bad argument #2 to 'leader_job' (store must be a store or a function that opens one)")
        assert.has_error(function() leader_job.start("j", { store = s, every = 1, timeout = 1 },
            print) end)
        assert.has_error(function() leader_job.start("j", { store = s, every = 1, bogus = 1 },
            print) end, "bad argument #2 to 'leader_job' (unknown option 'bogus')")
        assert.has_error(function() leader_job.start("j", { store = s, every = 1 }) end)
        runtime.nginx = false
        assert.has_error(function() leader_job.start("j", { store = s, every = 1 }, print) end,
            "cmpxchg.leader_job runs inside nginx (a chain of ngx.timer callbacks); in plain "
            .. "Lua, call election:campaign() in a loop of your own")
        assert.equal(0, backend:count())
    end)
end)
