-- Waiting by watch on etcd (issue 19 item 4), proved by counting requests,
-- never by timing: waiters run in child processes
-- (spec/support/etcd_watch_waiter.lua) that count what they send through a
-- wrapped transport (an HTTP request is one, a watch stream one however long
-- it stays open). Each check tells a watching waiter from a polling one: the
-- same waits with watch = false are shown to cost more.
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"
local harness = require "spec.support.etcd_harness"
local helpers = require "spec.helpers"
local lock = require "cmpxchg.lock"
local wait = require "cmpxchg.wait"

local cluster = harness.cluster()

local HOLD = 2              -- seconds a test holds while a waiter waits (it polls meanwhile)
local BOUND = 3             -- requests a watching waiter may send during such a hold

local function tmpdir()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. helpers.shell_quote(dir)))
    return dir
end

--- A waiter child: {p = its output, file = its count file}.
local function start_waiter(dir, i, endpoints, prefix, key, kind, watch, rounds, hold, timeout)
    local file = ("%s/count.%d"):format(dir, i)
    return { file = file, p = helpers.start("spec/support/etcd_watch_waiter.lua", {
        table.concat(endpoints, ","), prefix, key, kind, watch and "1" or "0", file,
        tostring(rounds), tostring(hold), tostring(timeout or 60) }) }
end

--- What a waiter has sent so far: {requests =, streams =, held =}.
local function counts(w)
    local f = io.open(w.file, "r")          -- none yet: it has sent nothing
    local text = f and f:read("*a") or ""
    if f then f:close() end
    local r, s, h = text:match("^requests (%d+) streams (%d+) held (%d+)")
    return { requests = tonumber(r) or 0, streams = tonumber(s) or 0, held = tonumber(h) or 0 }
end

--- Waits for a waiter to end: its lines, and its totals.
local function finish(w)
    local out = w.p:read("*a")
    local ok = helpers.pclose(w.p)
    assert(ok, "the waiter failed:\n" .. out)
    local acquired, failed = 0, 0
    for line in out:gmatch("[^\n]+") do
        if line:match("^acquired") then acquired = acquired + 1 end
        if line:match("^failed") then failed = failed + 1 end
    end
    local r, s, n = out:match("requests (%d+) streams (%d+) rounds (%d+)")
    assert(r, "no totals from the waiter:\n" .. out)
    return { acquired = acquired, failed = failed, requests = tonumber(r), streams = tonumber(s),
             rounds = tonumber(n), out = out }
end

--- Until the waiter waits: it watches (a stream is open), or it polls (its
-- requests keep coming: a watching waiter that polls is caught by the
-- counts that follow, not by this wait).
local function waiting(w, watch)
    helpers.wait_until(function()
        local c = counts(w)
        return (watch and c.streams >= 1) or c.requests >= 30
    end, 60, "the waiter to wait")
end

--- A store on a database of its own.
local function open_fresh()
    return assert(cmpxchg.open(cluster.endpoints, { database = harness.fresh_prefix(), timeout = 3 }))
end

--- A lock waiter on "k" of `st` that has queued behind the holder (it waited
-- once, 0.05 s, seeing the holder's lease `value` at `seen`), offering a
-- hand-off as one that waits a minute: the waiter.
local function queued_waiter(st, o, seen, value)
    local w = wait.new(st, "k", "lock", o, "me")
    assert.is_nil(w:change(seen, 0.05, 0.05, os.time() + 60, value))
    assert.is_table(w.chain, "the waiter did not queue")
    w.chain.handoff.Until = os.time() + 60      -- its deadline was 0.05 s on
    assert(w.chain:write())
    return w
end

--- What the test holds while a waiter waits: a lock, or the one permit.
local function hold(st, key, kind)
    if kind == "sem" then return assert(st:semaphore(key, 1):acquire({ ttl = 60 })) end
    return assert(st:lock(key, { ttl = 60 }))
end

--- The test holds; a waiter of `kind` waits HOLD seconds; the test releases
-- and the waiter acquires. Returns how many requests the waiter sent during
-- the hold and after the release.
local function hold_then_release(kind, watch)
    local prefix, dir = harness.fresh_prefix(), tmpdir()
    local st = assert(cmpxchg.open(cluster.endpoints, { database = prefix, timeout = 3 }))
    local held = hold(st, "k", kind)
    local w = start_waiter(dir, 1, cluster.endpoints, prefix, "k", kind, watch, 1, 0)
    waiting(w, watch)
    local before = counts(w)
    core.sleep(HOLD)            -- the hold's length is what is tested: its cost must not grow
    local during = counts(w)
    assert.equal(0, during.held, "acquired while held")
    assert(held:release())
    local total = finish(w)
    st:close()
    os.execute("rm -rf " .. helpers.shell_quote(dir))
    assert.equal(1, total.acquired, total.out)
    return during.requests - before.requests, total.requests - during.requests, total
end

describe("etcd waiting by watch", function()
    for _, kind in ipairs({ "lock", "fair", "sem" }) do
        local name = ({ lock = "a lock", fair = "a fair lock", sem = "a semaphore" })[kind]

        it(("a waiter on %s costs a bounded number of requests however long the hold, and "
            .. "the release wakes it"):format(name), function()
            local during, after = hold_then_release(kind, true)
            io.stderr:write(("\n[etcd watch] %s: %d requests during the hold, %d after it\n")
                :format(name, during, after))
            assert.is_true(during <= BOUND, ("%d requests while the lock was held %d s")
                :format(during, HOLD))
            -- woken by the release: it looks, writes, releases (and leaves its queue)
            assert.is_true(after <= 12, after .. " requests after the release")
        end)

        it(("a polling waiter on %s (watch = false) costs more the longer the hold"):format(name),
            function()
                local during = hold_then_release(kind, false)
                io.stderr:write(("\n[etcd watch] %s, polling: %d requests during the hold\n")
                    :format(name, during))
                assert.is_true(during > BOUND, ("only %d requests while polling %d s")
                    :format(during, HOLD))
            end)
    end

    it("a watch starts from the revision after the one the waiter saw: a release in between "
        .. "is not missed", function()
        local st = open_fresh()
        local l = assert(st:lock("k", { ttl = 60 }))
        local value, seen = st:get("k")
        assert.is_true(seen > 0)
        assert(l:release())      -- the release comes before the waiter's watch is set up
        local o = lock.options({ ttl = 60 }, 1, "test")
        local w = wait.new(st, "k", "lock", o, "me")
        -- a poll would sleep its pause (nil); a watch from seen + 1 sees the delete
        local r, now = w:change(seen, 5, 5, os.time() + 60, value)
        w:close()
        st:close()
        assert.is_true(r, "the release before the watch was missed")
        assert.same({ index = 0 }, now)
    end)

    it("the queued waiter next in line is woken by the key's release itself, before the "
        .. "holder's entry goes", function()
        -- a holder that came through the queue keeps its entry until just after its
        -- release deletes the key: the waiter behind that entry watches the key too,
        -- and wakes one commit sooner; here the entry stays, so only the key can wake it
        local st = open_fresh()
        local o = lock.options({ ttl = 60, waiter_ttl = 60 }, 1, "test")
        local l = assert(st:lock("k", { ttl = 60 }))
        local holder_entry = require("cmpxchg.queue").new(st, "k/waiters/", o, l.owner)
        assert(holder_entry:write())
        local value, seen = st:get("k")
        local w = wait.new(st, "k", "lock", o, "me")
        w.losses = 2            -- it lost its races: it queues, behind the holder's entry
        assert(l:release())     -- the key goes; the holder's entry stays
        local r, now = w:change(seen, 5, 5, os.time() + 60, value)
        assert.is_table(w.chain, "the waiter did not queue")
        w:close()
        holder_entry:leave()
        st:close()
        assert.is_true(r, "the release of the key did not wake the waiter next in line")
        assert.same({ index = 0 }, now)
    end)

    it("a release passes the lock to the queued waiter in the same commit, and the waiter "
        .. "holds it without a write of its own", function()
        local st = open_fresh()
        local o = lock.options({ ttl = 60, waiter_ttl = 60 }, 1, "test")
        local l = assert(st:lock("k", { ttl = 60 }))
        local value, seen = st:get("k")
        local w = queued_waiter(st, o, seen, value)
        local entry = w.chain.key
        assert(l:release())
        local now_value, now_index = st:get("k")
        -- the lock, written for the waiter by the release; the releaser kept nothing
        assert.is_table(now_value, "the release deleted the lock rather than pass it on")
        assert.equal("me", now_value.Owner)
        assert.equal(entry, now_value.Handoff)
        local r, now = w:change(seen, 5, 5, os.time() + 60, value)
        w:close()
        st:close()
        assert.is_true(r, "the waiter was not told")
        assert.equal(now_index, now.index)
        assert.equal(entry, now.value.Handoff)
    end)

    it("a queued waiter that gives up leaves the queue, and is passed nothing after", function()
        local st = open_fresh()
        local o = lock.options({ ttl = 60, waiter_ttl = 60 }, 1, "test")
        local l = assert(st:lock("k", { ttl = 60 }))
        local value, seen = st:get("k")
        local w = queued_waiter(st, o, seen, value)
        w:close()               -- it gave up
        assert(l:release())
        local now_value, now_index = st:get("k")
        st:close()
        assert.equal(0, now_index, "the lock went to a waiter that had left: "
            .. tostring(now_value and now_value.Owner))
    end)

    it("a lock passed on is the waiter's: store:lock returns it, and it holds until released",
        function()
            local prefix, dir = harness.fresh_prefix(), tmpdir()
            local st = assert(cmpxchg.open(cluster.endpoints, { database = prefix, timeout = 3 }))
            local held = hold(st, "k", "lock")
            local ws = { start_waiter(dir, 1, cluster.endpoints, prefix, "k", "lock", true, 1,
                0.05) }
            waiting(ws[1], true)
            assert(held:release())
            local t = finish(ws[1])
            st:close()
            os.execute("rm -rf " .. helpers.shell_quote(dir))
            assert.equal(0, t.failed, t.out)
            assert.equal(1, t.acquired, t.out)
            -- its one write: the create it lost before it queued; the release wrote the rest
            assert.truthy(t.out:find("writes 1 ", 1, true), t.out)
        end)

    it("a holder's release deletes the lock and its queue entry in one commit", function()
        -- in two, another client could take the lock between them and pass it to
        -- that entry, whose waiter is gone: nobody would hold it until its lease ran out
        local prefix, dir = harness.fresh_prefix(), tmpdir()
        local st = assert(cmpxchg.open(cluster.endpoints, { database = prefix, timeout = 3 }))
        local held = hold(st, "k", "lock")
        local _, since = st:get("k")
        local child = start_waiter(dir, 1, cluster.endpoints, prefix, "k", "lock", true, 1, 0.05)
        waiting(child, true)
        local wt = assert(st.backend:watch({ { prefix = "k", start = since + 1 } }, 30))
        assert(held:release())          -- passed to the child, which releases to nobody
        local t = finish(child)
        assert.equal(1, t.acquired, t.out)
        local key_deleted, entries_deleted = nil, {}
        local deadline = core.monotime() + 20
        while core.monotime() < deadline do
            local evs = wt:next(key_deleted and 0.5 or 1)
            if not evs and key_deleted then break end
            for _, e in ipairs(evs or {}) do
                if e.type == "DELETE" and e.key == "k" then
                    key_deleted = e.index
                elseif e.type == "DELETE" then
                    entries_deleted[#entries_deleted + 1] = e.index
                end
            end
        end
        wt:close()
        st:close()
        os.execute("rm -rf " .. helpers.shell_quote(dir))
        assert.is_number(key_deleted, "the lock was never deleted")
        assert.same({ key_deleted }, entries_deleted)
    end)

    it("an entry that was passed the lock once is never passed it again, and goes with the "
        .. "next release", function()
        local st = open_fresh()
        local o = lock.options({ ttl = 60, waiter_ttl = 60 }, 1, "test")
        -- an entry a holder left behind: alive, offering, and marked passed
        local q = require("cmpxchg.queue").new(st, "k/waiters/", o, "gone")
        q.handoff = require("cmpxchg.handoff").offer(st.backend, o, os.time() + 60)
        assert(q:write())
        local item = st:list("k/waiters/")[1]
        item.value.Passed = { Owner = "gone" }
        assert(st:put(item.key, item.value, item.index))
        local l = assert(st:lock("k", { ttl = 60 }))
        assert(l:release())
        local now_value, now_index = st:get("k")
        local left = st:list("k/waiters/")
        st:close()
        assert.equal(0, now_index, "the lock went to " .. tostring(now_value and now_value.Owner))
        assert.same({}, left)
    end)

    it("a waiter that saw no revision polls rather than replay the key's history", function()
        -- after an error the lock passes since = 0: a watch from revision 1
        -- would replay the old release and wake at once, every time (a spin)
        local st = open_fresh()
        assert(assert(st:lock("k", { ttl = 60 })):release())
        -- a lock waiter (it queues) and a campaign (it watches the key alone)
        for _, kind in ipairs({ "lock", "leader" }) do
            local w = wait.new(st, "k", kind, lock.options({ ttl = 60 }, 1, "test"), "me")
            local r = w:change(0, 0.01, 5)
            w:close()
            assert.is_nil(r, kind .. " waiter woken by a release of the past")
        end
        st:close()
    end)

    --- `n` waiters take the lock `rounds` times each (the test holds it until
    -- they all wait): the requests per acquisition.
    local function per_acquisition(n, rounds)
        local prefix, dir = harness.fresh_prefix(), tmpdir()
        local st = assert(cmpxchg.open(cluster.endpoints, { database = prefix, timeout = 3 }))
        local held = hold(st, "k", "lock")
        local ws = {}
        for i = 1, n do
            ws[i] = start_waiter(dir, i, cluster.endpoints, prefix, "k", "lock", true, rounds,
                0.05)
        end
        for i = 1, n do waiting(ws[i], true) end
        assert(held:release())
        local requests, acquired = 0, 0
        for i = 1, n do
            local t = finish(ws[i])
            assert.equal(0, t.failed, t.out)
            requests, acquired = requests + t.requests, acquired + t.acquired
        end
        st:close()
        os.execute("rm -rf " .. helpers.shell_quote(dir))
        assert.equal(n * rounds, acquired)
        return requests / acquired
    end

    it("the requests per acquisition do not grow with the number of waiters (a release wakes "
        .. "one)", function()
        -- woken all by each release, 12 waiters cost about 4x what 2 do (19 against 4.3
        -- requests per acquisition, JOIN_AFTER disabled); queued, under 2x (7.8)
        local two = per_acquisition(2, 6)
        local many = per_acquisition(12, 6)
        io.stderr:write(("\n[etcd watch] requests per acquisition: %.1f with 2 waiters, "
            .. "%.1f with 12\n"):format(two, many))
        assert.is_true(many <= 2 * two + 4, ("%.1f requests per acquisition with 12 waiters, "
            .. "%.1f with 2"):format(many, two))
    end)

    it("a waiter whose watched member dies still acquires, and never while the lock is held",
        function()
            local prefix, dir = harness.fresh_prefix(), tmpdir()
            local leader = tonumber(cluster.run("leader"))
            -- the waiter watches through the leader first
            local endpoints = { cluster.endpoints[leader + 1] }
            for i, url in ipairs(cluster.endpoints) do
                if i ~= leader + 1 then endpoints[#endpoints + 1] = url end
            end
            local st = assert(cmpxchg.open(cluster.endpoints, { database = prefix, timeout = 10 }))
            local held = hold(st, "k", "lock")
            local w = start_waiter(dir, 1, endpoints, prefix, "k", "lock", true, 1, 0)
            waiting(w, true)
            local ok, err = pcall(function()
                cluster.run("kill " .. leader)
                -- the stream ended: it looked again, and watches through another member
                helpers.wait_until(function() return counts(w).streams >= 2 end, 60,
                    "the waiter to watch again")
                assert.equal(0, counts(w).held, "acquired while held")
                local released, rerr
                for _ = 1, 20 do     -- bounded: the cluster may be electing a leader
                    released, rerr = held:release()
                    if released ~= nil then break end
                    core.sleep(0.5)
                end
                assert.is_true(released, tostring(rerr))
            end)
            local total = finish(w)
            st:close()
            cluster.run("restart " .. leader)
            os.execute("rm -rf " .. helpers.shell_quote(dir))
            assert(ok, tostring(err) .. "\nthe waiter said:\n" .. total.out)
            assert.equal(1, total.acquired, total.out)
        end)

    it("a waiter whose watched member stops answering (paused, its stream open) still sees "
        .. "the release long before its timeout", function()
        -- nothing comes on the paused member's stream: the watch's own end (10 s at the
        -- most) is what makes the waiter look again through another member; a watch as
        -- long as the wait (40 s here) left it waiting to its timeout (it then took the
        -- lock by its last look, after its timeout: `waited` tells)
        local prefix, dir = harness.fresh_prefix(), tmpdir()
        local leader = tonumber(cluster.run("leader"))
        local follower = (leader + 1) % 3
        local endpoints = { cluster.endpoints[follower + 1] }       -- the waiter's first
        local others = { cluster.endpoints[leader + 1] }             -- the holder's
        for i, url in ipairs(cluster.endpoints) do
            if i ~= follower + 1 then endpoints[#endpoints + 1] = url end
            if i ~= follower + 1 and i ~= leader + 1 then others[#others + 1] = url end
        end
        local st = assert(cmpxchg.open(others, { database = prefix, timeout = 10 }))
        local held = hold(st, "k", "lock")
        local w = start_waiter(dir, 1, endpoints, prefix, "k", "lock", true, 1, 0, 40)
        waiting(w, true)
        local ok, err = pcall(function()
            cluster.run("pause " .. follower)
            assert.equal(0, counts(w).held, "acquired while held")
            assert(held:release())
        end)
        local total = finish(w)
        cluster.run("resume " .. follower)
        st:close()
        os.execute("rm -rf " .. helpers.shell_quote(dir))
        assert(ok, tostring(err) .. "\nthe waiter said:\n" .. total.out)
        assert.equal(1, total.acquired, total.out)
        local waited = tonumber(total.out:match("waited ([%d.]+)"))
        assert.is_true(waited < 40, "acquired only at its timeout: " .. total.out)
    end)
end)
