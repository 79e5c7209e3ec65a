-- The one-commit hand-off (lua/cmpxchg/handoff.lua) against a fake backend
-- on a fake clock: whom a release passes the lock to, what it writes for
-- that waiter, what it does when it cannot, and how a waiter knows a passed
-- lock for its own. The etcd txn itself is tested in etcd_watch_spec.
local core = require "cmpxchg.core"
local handoff = require "cmpxchg.handoff"
local helpers = require "spec.helpers"
local json = require "cmpxchg.json"

local WALL0 = 1800000000

describe("handoff (unit)", function()
    local clock, restore

    before_each(function() clock, restore = helpers.fake_clock(WALL0) end)
    after_each(function() restore() end)

    --- A waiter's entry: alive for `left` more seconds, offering as given.
    local function entry(name, index, left, offer)
        return { key = "k/waiters/" .. name, index = index, value = {
            ExpiresAt = core.format_time(WALL0 + clock.now + left), Owner = "owner-" .. name,
            Host = "host-" .. name, Pid = 42, Ticket = index,
            Handoff = offer == nil and { Ttl = 30, Field = "ExpiresAt", Lease = "123456789",
                                         Until = WALL0 + 60 } or offer or nil } }
    end

    --- A backend whose queue is `entries` and whose pass answers `answer`
    -- (a table of its results); it records what was passed.
    local function backend(entries, answer, get)
        local b = { passed = {} }
        function b.oldest(_, prefix, n)
            b.prefix, b.n = prefix, n
            if entries == nil then return nil, "connect: refused", "connect" end
            return entries
        end
        function b.pass(_, key, index, to, text, lease, drop)
            b.passed[#b.passed + 1] = { key = key, index = index, to = to, lease = lease,
                value = text and json.decode(text), drop = drop,
                entry = to and json.decode(to.text) }
            return table.unpack(answer or { true, 101, true })
        end
        function b.get() return table.unpack(get or { 0 }) end
        return b
    end

    it("passes the lock to the oldest live waiter but the releaser, with that waiter's "
        .. "owner, ttl, lease and entry name", function()
        local own = { key = "k/waiters/me", index = 5 }
        local b = backend({ entry("me", 5, 4), entry("dead", 6, -1), entry("w", 7, 4),
                            entry("x", 8, 4) })
        local tried, ok, idx = handoff.release(b, "k", 99, own)
        assert.same({ true, true, 101 }, { tried, ok, idx })
        assert.equal("k/waiters/", b.prefix)
        local p = b.passed[1]
        assert.equal("k/waiters/w", p.to.key)
        assert.equal(7, p.to.index)
        assert.equal(99, p.index)
        assert.equal("123456789", p.lease)
        assert.same({ "k/waiters/me" }, p.drop)
        assert.same({ ExpiresAt = core.format_time(WALL0 + 30), Owner = "owner-w",
                      Host = "host-w", Pid = 42, Handoff = "k/waiters/w" }, p.value)
        assert.same(p.value, p.entry.Passed)    -- the entry tells its waiter too
        assert.is_nil(own.index, "our entry went with the txn, and is not deleted again")
    end)

    it("never passes the lock to the entry of the holder whose lease it took over, and "
        .. "deletes that entry with the txn", function()
        local own = { key = "k/waiters/me", index = 5 }
        local b = backend({ entry("h", 4, 4), entry("me", 5, 4), entry("w", 7, 4) })
        assert.same({ true, true, 101 }, { handoff.release(b, "k", 99, own, "owner-h") })
        local p = b.passed[1]
        assert.equal("k/waiters/w", p.to.key)
        assert.same({ "k/waiters/me", "k/waiters/h" }, p.drop)
    end)

    it("never passes the lock twice to one entry: an entry passed it before is one its "
        .. "holder left behind, and goes with the txn", function()
        local ghost = entry("g", 4, 4)
        ghost.value.Passed = { Owner = "owner-g" }
        local b = backend({ ghost, entry("w", 7, 4) })
        assert.same({ true, true, 101 }, { handoff.release(b, "k", 99, nil) })
        assert.equal("k/waiters/w", b.passed[1].to.key)
        assert.same({ "k/waiters/g" }, b.passed[1].drop)
    end)

    it("with nobody to pass to, deletes the lock and our entry in one txn", function()
        -- two commits would leave a moment where another holder passes the lock to
        -- our entry, whose waiter is gone
        local own = { key = "k/waiters/me", index = 5 }
        local b = backend({ entry("me", 5, 4) }, { true, 100, false })
        assert.same({ true, true, 100 }, { handoff.release(b, "k", 99, own) })
        local p = b.passed[1]
        assert.is_nil(p.to)
        assert.same({ "k/waiters/me" }, p.drop)
        assert.is_nil(own.index)
    end)

    it("passes over nobody: a fair waiter first in line (no offer) looks for itself",
        function()
            local b = backend({ entry("fair", 6, 4, false), entry("w", 7, 4) })
            assert.is_false(handoff.release(b, "k", 99, nil))
            assert.equal(0, #b.passed)
        end)

    it("refuses malformed offers (anything may be in the store)", function()
        local bad = {
            { Ttl = -1, Field = "ExpiresAt", Lease = "1", Until = WALL0 + 60 },
            { Ttl = 30, Field = "", Lease = "1", Until = WALL0 + 60 },
            { Ttl = 30, Field = "ExpiresAt", Lease = "1; drop", Until = WALL0 + 60 },
            { Ttl = 30, Field = "ExpiresAt", Lease = "12345678901234567890", Until = WALL0 + 60 },
            { Ttl = 30, Field = "ExpiresAt", Lease = "1", Until = WALL0 - 1 },  -- its wait is over
            { Ttl = "30", Field = "ExpiresAt", Lease = "1", Until = WALL0 + 60 },
            "yes",
        }
        for i, offer in ipairs(bad) do
            local b = backend({ entry("w", 7, 4, offer) })
            assert.is_false(handoff.release(b, "k", 99, nil), "offer " .. i)
            assert.equal(0, #b.passed, "offer " .. i)
        end
    end)

    it("deletes as ever when the queue cannot be read, or the waiter's lease is gone", function()
        assert.is_false(handoff.release(backend(nil), "k", 99, nil))
        local b = backend({ entry("w", 7, 4) }, { nil, "lease: requested lease not found",
                                                  "lease" })
        assert.is_false(handoff.release(b, "k", 99, nil))
    end)

    it("tells a lost lock, and settles an unknown outcome by reading the key", function()
        local own = { key = "k/waiters/me", index = 5 }
        local b = backend({ entry("w", 7, 4) }, { false, 120, { Owner = "other" } })
        assert.same({ true, false, 120 }, { handoff.release(b, "k", 99, own) })
        assert.equal(5, own.index, "our entry stays: it is deleted after the release")
        local unknown = { nil, "timeout: the write may have been applied", "timeout" }
        -- gone: released; passed to our waiter: released; another's: lost; still ours: failed
        b = backend({ entry("w", 7, 4) }, unknown, { 0 })
        assert.same({ true, true, 0 }, { handoff.release(b, "k", 99, nil) })
        b = backend({ entry("w", 7, 4) }, unknown, { 101, { Handoff = "k/waiters/w" } })
        assert.same({ true, true, 101 }, { handoff.release(b, "k", 99, nil) })
        b = backend({ entry("w", 7, 4) }, unknown, { 101, { Owner = "other" } })
        assert.same({ true, false, 101 }, { handoff.release(b, "k", 99, nil) })
        b = backend({ entry("w", 7, 4) }, unknown, { 99, { Owner = "me" } })
        local tried, ok, _, code = handoff.release(b, "k", 99, nil)
        assert.same({ true, nil, "timeout" }, { tried, ok, code })
    end)

    it("a waiter takes a passed lock only when it names its entry and its owner, its "
        .. "lease counted from no later than now", function()
        local q = { key = "k/waiters/w", owner = "owner-w" }
        local o = { ttl = 30, expires_field = "ExpiresAt" }
        local value = { ExpiresAt = core.format_time(WALL0 + 29), Owner = "owner-w",
                        Handoff = "k/waiters/w" }
        clock.now = 10
        local w = handoff.taken(101, value, q, o)
        assert.equal(101, w.index)
        assert.equal(WALL0 - 1, w.wall)         -- written 1 s before the start of our clock
        assert.equal(10 - 11, w.mono)
        -- a releaser's clock ahead of ours: never counted from later than now
        value.ExpiresAt = core.format_time(WALL0 + 50)
        w = handoff.taken(101, value, q, o)
        assert.equal(WALL0 + 10, w.wall)
        assert.equal(10, w.mono)
        assert.is_nil(handoff.taken(101, { ExpiresAt = value.ExpiresAt, Owner = "owner-w",
                                           Handoff = "k/waiters/x" }, q, o))
        assert.is_nil(handoff.taken(101, { ExpiresAt = value.ExpiresAt, Owner = "thief",
                                           Handoff = "k/waiters/w" }, q, o))
        assert.is_nil(handoff.taken(101, { Owner = "owner-w", Handoff = "k/waiters/w" }, q, o))
        assert.is_nil(handoff.taken(101, "k/waiters/w", q, o))
    end)

    it("offers nothing on a backend that cannot pass locks on, or without a lease", function()
        local o = { ttl = 30, expires_field = "ExpiresAt", expires_grace = 60 }
        assert.is_nil(handoff.offer({}, o, WALL0 + 60))
        local asked
        local b = { pass = true, lease_for = function(_, expires) asked = expires return nil end }
        assert.is_nil(handoff.offer(b, o, WALL0 + 60))
        assert.equal(WALL0 + 150, asked)        -- deadline + ttl + grace
        b.lease_for = function() return "77" end
        assert.same({ Ttl = 30, Field = "ExpiresAt", Lease = "77", Until = WALL0 + 60 },
            handoff.offer(b, o, WALL0 + 60))
    end)
end)
