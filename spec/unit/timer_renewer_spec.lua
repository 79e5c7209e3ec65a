-- lua/cmpxchg/timer_renewer.lua (auto-renew inside nginx) under a stand-in
-- `ngx` whose timers the test fires by hand, on the scripted memory backend:
-- when the chain renews, and that it ends by itself when nobody holds the
-- lock any more. (The real thing is spec/integration/nginx_spec.lua.)
local Memory = require "spec.support.memory_backend"

describe("timer renewer (stand-in ngx)", function()
    local timers, lease, timer_renewer, backend, st, r

    local OPTIONS = { ttl = 9, clock_skew = 0, expires_field = "ExpiresAt", expires_grace = 60 }
    local MODULES = { "cmpxchg.runtime", "cmpxchg.lease", "cmpxchg.timer_renewer" }

    before_each(function()
        timers = {}
        local fake = { timer = {} }
        fake.get_phase = function() return "timer" end
        fake.sleep = function() end
        fake.timer.at = function(delay, fn, ...)
            timers[#timers + 1] = { delay = delay, fn = fn, args = { ... } }
            return true
        end
        rawset(_G, "ngx", fake)
        for _, name in ipairs(MODULES) do package.loaded[name] = nil end
        lease = require "cmpxchg.lease"
        timer_renewer = require "cmpxchg.timer_renewer"
        backend = Memory.new()
        st = { backend = backend }
        local w = lease.write(backend, "k", OPTIONS, "me", 0)
        assert.is_true(w.ok)
        r = { key = "k", owner = "me", options = OPTIONS, index = w.index,
              valid = w.mono + OPTIONS.ttl, renewals = 0 }
    end)

    after_each(function()
        rawset(_G, "ngx", nil)
        for _, name in ipairs(MODULES) do package.loaded[name] = nil end
    end)

    --- Fires the last timer scheduled, as nginx would when it is due.
    local function fire(premature)
        local t = table.remove(timers)
        assert.is_table(t, "no timer is scheduled")
        t.fn(premature or false, (table.unpack or unpack)(t.args))
    end

    it("renews a third of a ttl after the lock, then every third of a ttl", function()
        local anchor = {}
        local renewer = timer_renewer.start(st, r, anchor)
        assert.equal(1, #timers)
        assert.equal(3, timers[1].delay)
        local held = r.index
        fire()
        assert.equal(2, backend:count("put"))
        local index, _, lost, reason, renewals = renewer:state()
        assert.is_true(index > held)
        assert.is_false(lost)
        assert.is_nil(reason)
        assert.equal(1, renewals)
        assert.same({ 3 }, { timers[1].delay })
        renewer:stop()
        fire()                                  -- a stopped chain writes nothing more
        assert.equal(2, backend:count("put"))
        assert.equal(0, #timers)
        assert.is_table(anchor)
    end)

    it("ends by itself, writing nothing, once nobody holds the lock object", function()
        local anchor = {}
        local renewer = timer_renewer.start(st, r, anchor)
        anchor = nil                            -- luacheck: ignore 311
        collectgarbage()
        collectgarbage()
        fire()
        assert.equal(1, backend:count("put"))   -- only the acquire
        assert.equal(0, #timers)
        assert.is_false((select(3, renewer:state())))
    end)

    it("ends when the worker exits (a premature timer)", function()
        local anchor = {}
        timer_renewer.start(st, r, anchor)
        fire(true)
        assert.equal(1, backend:count("put"))
        assert.equal(0, #timers)
        assert.is_table(anchor)
    end)
end)
