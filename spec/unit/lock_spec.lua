-- The lock and monitor logic, driven through the scripted memory backend and
-- a fake clock: every wait, lease and takeover is checked exactly.
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"
local helpers = require "spec.helpers"
local json = require "cmpxchg.json"
local runtime = require "cmpxchg.runtime"
local store = require "cmpxchg.store"
local Memory = require "spec.support.memory_backend"

local WALL0 = 1800000000        -- 2027-01-15T08:00:00Z

describe("lock (unit, fake clock)", function()
    local clock, restore, sleeps, backend, st

    before_each(function()
        clock, restore = helpers.fake_clock(WALL0)
        sleeps = clock.sleeps
        backend = Memory.new()
        st = store.new(backend)
    end)

    after_each(function() restore() end)

    -- a lease held by someone else, ending `ends` seconds from now
    local function foreign_lease(key, ends, field)
        local value = { [field or "ExpiresAt"] = core.format_time(WALL0 + clock.now + ends),
                        Owner = "someone-else" }
        local ok, idx = st:put(key, value, 0)
        assert.is_true(ok)
        return idx
    end

    it("acquires a free key with one put at index 0 and the C# value layout", function()
        local l = assert(st:lock("printers/1", { ttl = 10 }))
        assert.equal(1, backend:count("put"))
        local call = backend.calls[1]
        assert.equal(0, call[3])
        local value, index, expires = backend:item("printers/1")
        assert.equal(l:token(), index)
        assert.equal("2027-01-15T08:00:10.0000000Z", value.ExpiresAt)
        assert.equal(runtime.hostname, value.Host)
        assert.equal(runtime.pid(), value.Pid)
        assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", value.Owner)
        assert.equal(WALL0 + 10 + 60, expires)     -- @expires = lease end + grace
        assert.equal(1, l.attempts)
        assert.equal(0, l.takeovers)
        assert.equal("lock", cmpxchg.type(l))
    end)

    it("writes the expiry under the field the caller names", function()
        assert(st:lock("printers/1", { ttl = 20, expires_field = "ReservedUntil" }))
        local value = backend:item("printers/1")
        assert.equal("2027-01-15T08:00:20.0000000Z", value.ReservedUntil)
        assert.is_nil(value.ExpiresAt)
    end)

    it("tries exactly once with timeout = 0 and reports the holder", function()
        foreign_lease("k", 30)
        local l, err, code = st:lock("k", { timeout = 0 })
        assert.is_nil(l)
        assert.equal("timeout", code)
        assert.matches("^timeout: lock 'k' is held by someone%-else until 2027", err)
        assert.equal(2, backend:count("put"))   -- the foreign lease + our one try
        assert.same({}, sleeps)
    end)

    it("backs off exponentially with jitter, capped, and never past the deadline", function()
        foreign_lease("k", 3600)
        local l, _, code = st:lock("k", { timeout = 2, backoff_min = 0.01, backoff_max = 0.16 })
        assert.is_nil(l)
        assert.equal("timeout", code)
        local total, step = 0, 0.01
        for i, s in ipairs(sleeps) do
            assert.is_true(s >= 0.01 - 1e-12 or i == #sleeps, "slept less than backoff_min")
            assert.is_true(s <= step + 1e-12,
                ("sleep %d is %.4f, above its step %.4f"):format(i, s, step))
            step = math.min(step * 2, 0.16)
            total = total + s
        end
        assert.is_true(total <= 2 + 1e-9, "waited past the deadline")
        assert.is_true(total >= 2 - 1e-9, "gave up before the deadline")
        assert.is_true(#sleeps >= 12)           -- 2 s at steps capped at 0.16 s
    end)

    it("takes over an expired lease with a put on the index it was shown", function()
        local old = foreign_lease("k", 5)
        clock.now = clock.now + 6
        local l = assert(st:lock("k", { timeout = 0 }))
        assert.equal(1, l.takeovers)
        assert.equal(2, l.attempts)
        assert.equal(old, backend.calls[#backend.calls][3])   -- put with the old index
        assert.is_true(l:token() > old)
        assert.same({}, sleeps)
    end)

    it("waits until just after a lease ends rather than a whole backoff step", function()
        foreign_lease("k", 0.05)
        local l = assert(st:lock("k", { timeout = 5, backoff_min = 1, backoff_max = 4 }))
        assert.equal(1, #sleeps)
        assert.is_true(sleeps[1] <= 0.052, "slept " .. sleeps[1])
        assert.equal(1, l.takeovers)
    end)

    it("honours the clock-skew margin before a takeover", function()
        foreign_lease("k", 1)
        clock.now = clock.now + 1.5                       -- expired, but within a 1 s margin
        assert.is_nil((st:lock("k", { timeout = 0, clock_skew = 1 })))
        clock.now = clock.now + 0.6
        assert.truthy(st:lock("k", { timeout = 0, clock_skew = 1 }))
    end)

    it("never takes over a value that names no expiry", function()
        assert.is_true((st:put("k", { Owner = "legacy" }, 0)))
        clock.now = clock.now + 1e6
        local l, err = st:lock("k", { timeout = 0.1 })
        assert.is_nil(l)
        assert.matches("until an unknown time", err)
        assert.is_true((st:put("k2", "just a string", 0)))
        local _, err2 = st:lock("k2", { timeout = 0 })
        assert.matches("a value that is not a lock", err2)
    end)

    it("loses a takeover race cleanly and keeps waiting", function()
        local old = foreign_lease("k", 1)
        clock.now = clock.now + 2
        -- a rival takes it over between our read and our put
        local real_put = backend.put
        local raced = false
        backend.put = function(self, key, text, index, expires)
            if index == old and not raced then
                raced = true
                assert.is_true((real_put(self, key, json.encode({
                    ExpiresAt = core.format_time(WALL0 + clock.now + 100), Owner = "rival" }), old)))
            end
            return real_put(self, key, text, index, expires)
        end
        local l, err = st:lock("k", { timeout = 0.5 })
        assert.is_nil(l)
        assert.matches("held by rival", err)
        assert.is_true(raced)
    end)

    it("counts the lease from before the request and reports is_held/valid_until", function()
        local real_put = backend.put
        backend.put = function(...)
            clock.now = clock.now + 2                 -- a slow request
            return real_put(...)
        end
        local l = assert(st:lock("k", { ttl = 10, clock_skew = 0.5 }))
        assert.equal(WALL0 + 10 - 0.5, l:valid_until())
        clock.now = 9.4
        assert.is_true(l:is_held())
        clock.now = 9.6
        assert.is_false(l:is_held())
    end)

    it("releases by deleting the held index, idempotently", function()
        local l = assert(st:lock("k"))
        assert.is_true(l:release())
        assert.is_true(l:release())
        assert.equal(1, backend:count("delete"))
        assert.equal(l:token(), backend.calls[2][2])
        assert.is_nil(backend:item("k"))
        assert.equal("released lock", cmpxchg.type(l))
        assert.is_false(l:is_held())
    end)

    it("release reports 'lost' when the lease was taken over, and leaves the new holder", function()
        local l = assert(st:lock("k", { ttl = 1 }))
        clock.now = clock.now + 2
        local rival = assert(st:lock("k", { timeout = 0 }))
        assert.same({ false, "lost" }, { l:release() })
        assert.same({ false, "lost" }, { l:release() })
        local _, index = backend:item("k")
        assert.equal(rival:token(), index)
    end)

    it("a release that fails on I/O keeps the lock so it can be retried", function()
        local l = assert(st:lock("k"))
        backend:fail_next("delete", "io: disk on fire", "io")
        assert.same({ nil, "io: disk on fire", "io" }, { l:release() })
        assert.equal("lock", cmpxchg.type(l))
        assert.is_true(l:release())
    end)

    it("a release whose outcome is unknown and that was not applied keeps the lock", function()
        -- the read-back finds our own lease still there: nothing happened, and
        -- the release may be tried again (it is not "lost")
        local l = assert(st:lock("k"))
        backend:fail_next("delete", "connect: reset", "connect")
        assert.same({ nil, "connect: reset", "connect" }, { l:release() })
        assert.equal("lock", cmpxchg.type(l))
        assert.is_true(l:is_held())
        assert.is_true(l:release())
        assert.is_nil(backend:item("k"))
    end)

    it("extend renews by a put on the held index and moves the token", function()
        local l = assert(st:lock("k", { ttl = 5 }))
        local first = l:token()
        clock.now = 4
        assert.is_true(l:extend(20))
        assert.is_true(l:token() > first)
        assert.equal(first, backend.calls[#backend.calls][3])
        assert.equal(WALL0 + 24, l:valid_until())
        assert.equal("2027-01-15T08:00:24.0000000Z", backend:item("k").ExpiresAt)
        clock.now = 23
        assert.is_true(l:is_held())
    end)

    it("extend after a takeover reports lost and marks the lock lost", function()
        local l = assert(st:lock("k", { ttl = 1 }))
        clock.now = 2
        assert(st:lock("k", { timeout = 0 }))
        local ok, err, code = l:extend()
        assert.is_nil(ok)
        assert.equal("lost", code)
        assert.matches("^lost: lock 'k' is now held by", err)
        assert.is_false(l:is_held())
        assert.same({ nil, "lost: lock 'k' was taken over", "lost" }, { l:extend() })
        local mine = assert(st:lock("mine"))
        assert.is_true(mine:release())
        assert.has_error(function() mine:extend() end, "attempt to extend a released lock")
    end)

    it("tokens strictly increase across holders of a key", function()
        local last = 0
        for _ = 1, 20 do
            local l = assert(st:lock("k"))
            assert.is_true(l:token() > last)
            last = l:token()
            assert.is_true(l:release())
        end
    end)

    it("passes backend errors through and never hands out a lock it did not get", function()
        backend:fail_next("put", "io: disk full", "io")
        assert.same({ nil, "io: disk full", "io" }, { st:lock("k") })
        assert.is_nil(backend:item("k"))
    end)

    it("settles an acquire whose reply was lost by reading the key back: ours", function()
        backend:fail_after_apply("put", "timeout: no reply", "timeout")
        local l = assert(st:lock("k"))
        local value, index = backend:item("k")
        assert.equal(index, l:token())
        assert.equal(l.owner, value.Owner)
        assert.equal(1, l.attempts)
        assert.equal(1, backend:count("put"))       -- read back, not written twice
    end)

    it("settles an acquire that was not applied, and tries again", function()
        backend:fail_next("put", "connect: reset", "connect")
        local l = assert(st:lock("k"))
        assert.equal(2, l.attempts)
        assert.equal(l:token(), select(2, backend:item("k")))
    end)

    it("waits out transient failures within its timeout, and reports the last one after", function()
        local real_put, failures = backend.put, 3
        backend.put = function(...)
            if failures > 0 then
                failures = failures - 1
                return nil, "connect: no leader", "connect"
            end
            return real_put(...)
        end
        backend:fail_next("get", "connect: down too", "connect")
        local l = assert(st:lock("k", { timeout = 5 }))
        assert.equal(4, l.writes)
        assert.is_true(#sleeps >= 3)
        -- a store that stays unreachable: the last error, when the time is up
        failures = math.huge
        local ok, err, code, stats = st:lock("k2", { timeout = 1 })
        assert.is_nil(ok)
        assert.same({ "connect: no leader", "connect" }, { err, code })
        assert.is_true(stats.writes > 3)
        assert.is_true(math.abs(stats.waited - 1) < 1e-6)
        -- and final errors are never waited out
        backend.put = real_put
        backend:fail_next("put", "auth: permission denied", "auth")
        assert.same({ nil, "auth: permission denied", "auth" }, { st:lock("k3", { timeout = 5 }) })
    end)

    it("never takes a lease it cannot settle", function()
        backend:fail_after_apply("put", "timeout: no reply", "timeout")
        backend:fail_next("get", "timeout: still down", "timeout")
        assert.same({ nil, "timeout: no reply", "timeout" }, { st:lock("k", { timeout = 0 }) })
    end)

    it("settles a release whose reply was lost, and never deletes someone else's lease", function()
        local l = assert(st:lock("k"))
        backend:fail_after_apply("delete", "timeout: no reply", "timeout")
        assert.is_true(l:release())
        assert.is_nil(backend:item("k"))
        -- a release that did not happen, with someone else holding it now
        local l2 = assert(st:lock("k2", { ttl = 1 }))
        clock.now = clock.now + 2
        local rival = assert(st:lock("k2", { timeout = 0 }))
        backend:fail_next("delete", "connect: reset", "connect")
        assert.same({ false, "lost" }, { l2:release() })
        assert.equal(rival:token(), select(2, backend:item("k2")))
    end)

    it("describes a holder whose value has a strange Pid without raising", function()
        local cases = { { 1.5, "o@h (pid 1.5)" }, { "42", "o@h until" }, { -3, "o@h (pid -3)" },
                        { 2^40, "o@h (pid 1099511627776)" } }
        for i, case in ipairs(cases) do
            assert(st:put("k" .. i, { ExpiresAt = core.format_time(WALL0 + 100), Owner = "o",
                Host = "h", Pid = case[1] }, 0))
            local l, err, code = st:lock("k" .. i, { timeout = 0 })
            assert.is_nil(l)
            assert.equal("timeout", code)
            assert.truthy(err:find("held by " .. case[2], 1, true), err)
        end
    end)

    it("takes a huge timeout as a long wait, not as an error", function()
        local l = assert(st:lock("k", { timeout = 1e6, ttl = 1e9 }))
        assert.is_true(l:is_held())
        assert.is_true(l:release())
    end)

    it("settles an extend whose reply was lost", function()
        local l = assert(st:lock("k", { ttl = 5 }))
        local before = l:token()
        backend:fail_after_apply("put", "timeout: no reply", "timeout")
        assert.is_true(l:extend(50))
        assert.is_true(l:token() > before)
        assert.equal(l:token(), select(2, backend:item("k")))
    end)

    describe("on a backend that deduplicates writes by id (RavenDB)", function()
        before_each(function()
            backend = Memory.new({ write_ids = true })
            st = store.new(backend)
        end)

        local function calls(method)
            local out = {}
            for _, c in ipairs(backend.calls) do
                if c.method == method then out[#out + 1] = c end
            end
            return out
        end

        it("settles an unknown outcome by sending the same write again, never by a read", function()
            backend:fail_after_apply("put", "timeout: no reply", "timeout")
            local l = assert(st:lock("k"))
            assert.equal(l:token(), select(2, backend:item("k")))
            local puts = calls("put")
            assert.equal(2, #puts)
            assert.is_string(puts[1][5])
            assert.equal(puts[1][5], puts[2][5])      -- the same write id
            assert.equal(puts[1][2], puts[2][2])      -- the same lease
            assert.equal(0, backend:count("get"))     -- a lagging follower is never asked
            assert.equal(1, backend.last_index)       -- applied once
        end)

        it("an outcome that stays unknown is sent again, as it was, by the next attempt", function()
            local real_put, failures = backend.put, 3
            backend.put = function(self, ...)
                local a, b, c = real_put(self, ...)       -- applied every time it arrives
                if failures > 0 then
                    failures = failures - 1
                    return nil, "timeout: no reply", "timeout"
                end
                return a, b, c
            end
            local l = assert(st:lock("k", { timeout = 5 }))
            local puts = calls("put")
            assert.equal(4, #puts)
            for _, c in ipairs(puts) do assert.equal(puts[1][5], c[5]) end
            assert.equal(1, backend.last_index)
            assert.equal(l:token(), select(2, backend:item("k")))
            -- and the lease is counted from the first send
            assert.is_true(l:valid_until() <= WALL0 + 30)
        end)

        it("never hands out a lease that was settled only after it ran out", function()
            local real_put, slow = backend.put, true
            backend.put = function(self, ...)
                local a, b, c = real_put(self, ...)
                if slow then                    -- applied, answered 31 s later
                    slow = false
                    clock.now = clock.now + 31
                end
                return a, b, c
            end
            local l = assert(st:lock("k", { ttl = 30, timeout = 5 }))
            assert.is_true(l:is_held())
            assert.equal(2, l.writes)
            assert.equal(1, l.takeovers)        -- its own expired lease, taken over
            assert.equal(l:token(), select(2, backend:item("k")))
        end)

        it("a release whose outcome stays unknown sends the same delete when retried", function()
            local l = assert(st:lock("k"))
            local real_delete, failures = backend.delete, 2
            backend.delete = function(self, ...)
                local a, b, c = real_delete(self, ...)
                if failures > 0 then
                    failures = failures - 1
                    return nil, "connect: reset", "connect"
                end
                return a, b, c
            end
            local ok, _, code = l:release()
            assert.is_nil(ok)                   -- unknown: the lock may be retried
            assert.equal("connect", code)
            assert.is_true(l:release())         -- the same delete: its first answer
            local deletes = calls("delete")
            assert.equal(3, #deletes)
            for _, c in ipairs(deletes) do assert.equal(deletes[1][3], c[3]) end
            assert.is_nil(backend:item("k"))
            assert.equal(0, backend:count("get"))
        end)

        it("an extend whose outcome stayed unknown is settled before the next extend or release", function()
            local l = assert(st:lock("k", { ttl = 5 }))
            local real_put, failures = backend.put, 2
            backend.put = function(self, ...)
                local a, b, c = real_put(self, ...)
                if failures > 0 then
                    failures = failures - 1
                    return nil, "timeout: no reply", "timeout"
                end
                return a, b, c
            end
            local ok, _, code = l:extend(50)
            assert.is_nil(ok)
            assert.equal("timeout", code)
            local applied = select(2, backend:item("k"))
            assert.is_true(l:release())         -- settles the extend, deletes what it wrote
            assert.is_nil(backend:item("k"))
            assert.equal(applied, calls("delete")[1][2])
        end)
    end)

    it("an extend whose outcome is unknown and that was not applied keeps the lock on its lease", function()
        -- the read-back finds our owner id under the old expiry: that is our
        -- old lease, not the new one, and the lock stays as it was
        local l = assert(st:lock("k", { ttl = 10 }))
        local token, ends = l:token(), l:valid_until()
        clock.now = clock.now + 1
        backend:fail_next("put", "timeout: no reply", "timeout")
        assert.same({ nil, "timeout: no reply", "timeout" }, { l:extend(60) })
        assert.equal(token, l:token())
        assert.equal(ends, l:valid_until())
        assert.is_true(l:is_held())
        clock.now = clock.now + 9.5
        assert.is_false(l:is_held())                -- on the old lease's time
        assert.is_true(l:extend(60))                -- tried again while it lasts
        assert.is_true(l:token() > token)
    end)

    it("never settles an acquire of unknown outcome on another owner's lease", function()
        -- a rival's lease that ends at the very instant ours would: only the
        -- owner id tells them apart
        local ends = core.format_time(WALL0 + clock.now + 10)
        assert(st:put("k", { ExpiresAt = ends, Owner = "rival" }, 0))
        backend:fail_next("put", "timeout: no reply", "timeout")
        local l, err, code = st:lock("k", { ttl = 10, timeout = 0 })
        assert.is_nil(l)
        assert.same({ "timeout: no reply", "timeout" }, { err, code })
        assert.equal("rival", backend:item("k").Owner)
    end)

    it("waits with reads, and writes only to take a lease that is gone or expired", function()
        foreign_lease("k", 1)                           -- 1 put
        local l = assert(st:lock("k", { timeout = 5, backoff_min = 0.01, backoff_max = 0.2 }))
        assert.equal(3, backend:count("put"))           -- ours that lost, and the takeover
        assert.is_true(backend:count("get") >= 5)
        assert.equal(2, l.writes)
        assert.equal(l.attempts, l.writes + backend:count("get"))
        assert.equal(1, l.takeovers)
    end)

    it("a timeout failure reports its attempts and time waited", function()
        foreign_lease("k", 3600)
        local l, err, code, stats = st:lock("k", { timeout = 1 })
        assert.is_nil(l)
        assert.equal("timeout", code)
        assert.is_true(stats.attempts > 1)
        assert.is_true(math.abs(stats.waited - 1) < 1e-9)
        assert.matches("%(" .. stats.attempts .. " attempts in 1%.000 s%)", err)
        local _, err1, _, stats1 = st:lock("k", { timeout = 0 })
        assert.equal(1, stats1.attempts)
        assert.matches("%(1 attempt in", err1)
    end)

    it("calls on_lost once, from Lua, when the lease is found taken over", function()
        local calls = {}
        local l = assert(st:lock("k", { ttl = 1, on_lost = function(lk, why)
            calls[#calls + 1] = { lk, why }
        end }))
        clock.now = clock.now + 2
        assert(st:lock("k", { timeout = 0 }))
        assert.is_nil((l:extend()))
        assert.equal(1, #calls)
        assert.equal(l, calls[1][1])
        assert.matches("^lost: lock 'k' is now held by", calls[1][2])
        l:release()
        assert.equal(1, #calls)
    end)

    it("with_lock runs the body holding the lock and returns its results", function()
        local seen
        local ok, a, b = st:with_lock("k", nil, function(x, y)
            seen = backend:item("k")
            return x + y, "done"
        end, 1, 2)
        assert.same({ true, 3, "done" }, { ok, a, b })
        assert.is_table(seen)
        assert.is_nil(backend:item("k"))
    end)

    it("with_lock releases on error and re-raises the very same error", function()
        local e = setmetatable({}, { __tostring = function() return "custom" end })
        local ok, got = pcall(st.with_lock, st, "k", {}, function() error(e) end)
        assert.is_false(ok)
        assert.equal(e, got)
        assert.is_nil(backend:item("k"))
    end)

    it("with_lock never runs the body when the lock is not acquired", function()
        foreign_lease("k", 60)
        local ran = false
        local ok, err, code = st:with_lock("k", { timeout = 0 }, function() ran = true end)
        assert.is_nil(ok)
        assert.equal("timeout", code)
        assert.matches("^timeout:", err)
        assert.is_false(ran)
    end)

    it("with_lock reports a lease lost while the body ran", function()
        local ok, _, code = st:with_lock("k", { ttl = 1 }, function()
            clock.now = clock.now + 2
            assert(st:lock("k", { timeout = 0 }))
        end)
        assert.is_nil(ok)
        assert.equal("lost", code)
    end)

    it("the monitor waits until acquired with a 5-minute lease, as the seed does", function()
        local mon = cmpxchg.monitor(st)
        foreign_lease("proc", 120)
        local index = assert(mon:enter("proc"))
        assert.is_true(clock.now >= 120, "entered before the lease ended")
        assert.equal(WALL0 + clock.now + 300, core.parse_time(backend:item("proc").ExpiresAt))
        assert.is_true(mon:exit("proc", index))
        assert.is_nil(backend:item("proc"))
        assert.same({ false, "lost" }, { mon:exit("proc", index) })
        local l = assert(mon:lock("proc"))
        assert.equal("lock", cmpxchg.type(l))
        assert.is_true(l:release())
    end)

    it("the operator sees a lease as expired only once it ended, as a takeover decides", function()
        local admin = require "cmpxchg.admin"
        local item = { key = "k", index = 7, value = { ExpiresAt = core.format_time(WALL0 + 10),
                                                        Owner = "o" } }
        for _, case in ipairs({ { 9.5, false }, { 10, false }, { 10.5, true } }) do
            clock.now = case[1]
            local d = admin.describe(item)
            assert.equal(case[2], d.expired, "at " .. case[1])
            assert.equal(10 - case[1], d.remaining)
        end
    end)

    it("an unreleased, unreferenced lock is collected without any I/O", function()
        local weak = setmetatable({}, { __mode = "v" })
        weak[1] = assert(st:lock("k"))
        local calls = #backend.calls
        collectgarbage()
        collectgarbage()
        assert.is_nil(weak[1])
        assert.equal(calls, #backend.calls)
        assert.is_table(backend:item("k"))      -- the lease stays until it expires
    end)

    it("rejects bad options before any I/O", function()
        local bad = {
            { ttl = 0 }, { ttl = -1 }, { ttl = 0 / 0 }, { ttl = "10" }, { timeout = -1 },
            { backoff_min = 1, backoff_max = 0.5 }, { expires_field = "" },
            { expires_field = 1 }, { clock_skew = 40, ttl = 30 }, { clock_skew = 30, ttl = 30 },
            { owner = 7 },
            { on_lost = true }, { auto_renew = "yes" }, { timeout = 0 / 0 },
            { backoff_min = 0 / 0 }, { clock_skew = 0 / 0 }, { expires_grace = 0 / 0 },
        }
        for i, opts in ipairs(bad) do
            -- refused here, as the caller's misuse: never raised from deeper in
            local ok, err = pcall(st.lock, st, "k", opts)
            assert.is_false(ok, "bad options #" .. i)
            assert.matches("bad argument #2 to 'lock'", tostring(err), 1, true)
        end
        -- a misspelt option would quietly do nothing: autorenew gave a lock
        -- that was never renewed
        assert.has_error(function() st:lock("k", { autorenew = true }) end,
            "bad argument #2 to 'lock' (unknown option 'autorenew')")
        -- each says what is wrong with it
        assert.has_error(function() st:lock("k", { ttl = 0 }) end,
            "bad argument #2 to 'lock' (ttl must be positive)")
        -- a skew as long as the lease leaves no lease at all: refused for
        -- that, not for waiter_ttl (which it happens to break as well)
        assert.has_error(function() st:lock("k", { clock_skew = 30, ttl = 30 }) end,
            "bad argument #2 to 'lock' (clock_skew must be less than ttl)")
        -- valid but huge values are refused here, never raised from inside
        assert.has_error(function() st:lock("k", { ttl = 1e12 }) end,
            "bad argument #2 to 'lock' (ttl and expires_grace must be at most 10000000000 seconds)")
        assert.has_error(function() st:lock("k", { backoff_max = 1e12 }) end,
            "bad argument #2 to 'lock' (backoff_max must be at most 86400 seconds)")
        assert.has_error(function() st:lock("k", "fast") end,
            "bad argument #2 to 'lock' (table expected, got string)")
        assert.has_error(function() st:lock("", {}) end)
        assert.equal(0, #backend.calls)
    end)
end)
