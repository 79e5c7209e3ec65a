-- lua/cmpxchg/runtime.lua under a stand-in `ngx` global: which phases may wait,
-- what a wait becomes, and the error where none is allowed. (The real thing is
-- spec/integration/nginx_spec.lua; this pins the rules without an nginx.)
describe("runtime inside nginx", function()
    local runtime, fake, slept

    before_each(function()
        slept = {}
        fake = { phase = "content" }
        fake.get_phase = function() return fake.phase end
        fake.sleep = function(s) slept[#slept + 1] = s end
        rawset(_G, "ngx", fake)
        package.loaded["cmpxchg.runtime"] = nil
        runtime = require "cmpxchg.runtime"
    end)

    after_each(function()
        rawset(_G, "ngx", nil)
        package.loaded["cmpxchg.runtime"] = nil
    end)

    it("knows it is inside nginx and in which phase", function()
        assert.is_true(runtime.nginx)
        assert.equal("content", runtime.phase())
    end)

    it("waits with ngx.sleep, never shorter than nginx's millisecond", function()
        runtime.sleep(0.25)
        runtime.sleep(0.00001)
        assert.same({ 0.25, 0.001 }, slept)
    end)

    it("may yield in rewrite, access, content and timers only", function()
        for _, phase in ipairs({ "rewrite", "server_rewrite", "access", "content", "timer",
                                 "ssl_cert" }) do
            fake.phase = phase
            assert.is_true(runtime.can_yield(), phase)
        end
        for _, phase in ipairs({ "init", "init_worker", "set", "header_filter", "body_filter",
                                 "log", "balancer", "exit_worker", "ssl_client_hello" }) do
            fake.phase = phase
            assert.is_false(runtime.can_yield(), phase)
        end
    end)

    it("raises a clear error instead of waiting where nothing may yield", function()
        fake.phase = "log"
        local ok, err = pcall(runtime.sleep, 0.1)
        assert.is_false(ok)
        assert.matches("cmpxchg: a wait (ngx.sleep) cannot run in the log phase: nginx allows "
            .. "no waiting or network I/O in log_by_lua*; ", err, 1, true)
        assert.matches("ngx.timer.at(0, fn)", err, 1, true)
        assert.same({}, slept)
        ok, err = pcall(runtime.check_yield, "store:lock with a timeout")
        assert.is_false(ok)
        assert.matches("cmpxchg: store:lock with a timeout cannot run in the log phase", err, 1,
            true)
        fake.phase = "content"
        assert.has_no.errors(function() runtime.check_yield("anything") end)
    end)

    it("gives each worker its own pid and random numbers", function()
        local core = require "cmpxchg.core"
        assert.equal(core.pid(), runtime.pid())
        for _ = 1, 100 do
            local x = runtime.random()
            assert.is_true(x >= 0 and x < 1)
        end
        assert.are_not.equal(runtime.random(), runtime.random())
    end)
end)

describe("runtime outside nginx", function()
    it("waits in C and may always yield", function()
        package.loaded["cmpxchg.runtime"] = nil
        local runtime = require "cmpxchg.runtime"
        local core = require "cmpxchg.core"
        assert.is_false(runtime.nginx)
        assert.equal("plain", runtime.phase())
        assert.is_true(runtime.can_yield())
        assert.equal(core.sleep, runtime.sleep)
        package.loaded["cmpxchg.runtime"] = nil
    end)
end)
