-- One renewal turn (lease.renew, which the renewal thread and the nginx timer
-- both run) on the scripted memory backend with a fake clock: when a turn
-- renews, when it merely failed, and when the lease is lost.
local helpers = require "spec.helpers"
local lease = require "cmpxchg.lease"
local Memory = require "spec.support.memory_backend"

local WALL0 = 1800000000

describe("lease.renew (unit, fake clock)", function()
    local clock, restore, backend, r

    local OPTIONS = { ttl = 10, clock_skew = 0, expires_field = "ExpiresAt", expires_grace = 60 }

    before_each(function()
        clock, restore = helpers.fake_clock(WALL0)
        backend = Memory.new()
        local w = lease.write(backend, "k", OPTIONS, "me", 0)
        assert.is_true(w.ok)
        r = { key = "k", owner = "me", options = OPTIONS, index = w.index,
              valid = w.mono + OPTIONS.ttl, renewals = 0 }
    end)

    after_each(function() restore() end)

    it("renews with a put on the held index, moving the index and the lease end", function()
        local held = r.index
        clock.now = 3
        assert.equal("renewed", lease.renew(backend, r))
        assert.is_true(r.index > held)
        assert.equal(13, r.valid)
        assert.equal(1, r.renewals)
        assert.equal(held, backend.calls[#backend.calls][3])
        assert.equal(10 / 3, lease.next_turn(r, "renewed"))
    end)

    it("a renewal whose outcome is unknown and that was not applied merely failed", function()
        -- the read-back finds our previous lease (our owner id, the old
        -- expiry) at the held index: still ours, for the time it had left
        local held, valid = r.index, r.valid
        clock.now = 3
        backend:fail_next("put", "timeout: no reply", "timeout")
        assert.equal("failed", lease.renew(backend, r))
        assert.same({ held, valid, 0 }, { r.index, r.valid, r.renewals })
        assert.matches("^lost: renewal failed: timeout: no reply", r.reason)
        assert.is_true(lease.next_turn(r, "failed") <= 0.5)
        assert.equal("renewed", lease.renew(backend, r))     -- the next turn works
    end)

    it("a renewal whose outcome is unknown and that applied renewed", function()
        clock.now = 3
        backend:fail_after_apply("put", "timeout: no reply", "timeout")
        assert.equal("renewed", lease.renew(backend, r))
        assert.equal(select(2, backend:item("k")), r.index)
        assert.equal(13, r.valid)
    end)

    it("a failure with under half a second of lease left is a loss", function()
        clock.now = r.valid - 0.6
        backend:fail_next("put", "connect: refused", "connect")
        backend:fail_next("get", "connect: refused", "connect")
        assert.equal("failed", lease.renew(backend, r))
        clock.now = r.valid - 0.4
        backend:fail_next("put", "connect: refused", "connect")
        backend:fail_next("get", "connect: refused", "connect")
        assert.equal("lost", lease.renew(backend, r))
        assert.matches("^lost: renewal failed: connect: refused", r.reason)
    end)

    it("a lease someone else holds now is lost", function()
        clock.now = 11
        assert.is_true((backend:delete("k", r.index)))
        assert.is_true((backend:put("k", '{"Owner":"rival"}', 0)))
        assert.equal("lost", lease.renew(backend, r))
        assert.equal("lost: the lease was taken over", r.reason)
    end)
end)

describe("the renewal thread's first turn (unit)", function()
    it("is due a third of a ttl after the lock is taken", function()
        -- the thread (csrc/renew.c) renews when it is told to: renew_spec
        -- proves it keeps to that; this is what it is told
        local core = require "cmpxchg.core"
        local renewal = require "cmpxchg.renewal"
        local saved, added = core.renewer_start, nil
        core.renewer_start = function()
            return { add = function(_, ...) added = { ... } return {} end }
        end
        local ok, err = pcall(function()
            local st = { origin = { target = "t.db", options = {} }, backend = {} }
            renewal.start({ store = st, key = "k", owner = "me", index = 7, valid_mono = 130,
                            options = { ttl = 30, clock_skew = 1, expires_field = "ExpiresAt",
                                        expires_grace = 60 } }, function() end)
        end)
        core.renewer_start = saved
        assert(ok, err)
        assert.same({ 7, 130, 10 }, { added[2], added[3], added[4] })
    end)
end)
