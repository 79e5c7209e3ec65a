-- The lock torture test (spec/support/torture.lua) on every backend: 8 worker
-- processes, 320 critical sections with 1 s leases, holders SIGKILLed and SIGSTOPped
-- past their lease mid-section, a fenced write in every section; on etcd the
-- cluster's leader is killed mid-run as well. No two valid leases may overlap and
-- no stale write may be accepted. Then the same with a semaphore of 3 permits
-- (240 sections): never more than 3 valid permits at once, no overlap on one
-- permit, no stale write accepted on the resource a permit fences. And the lock
-- again with fair = true: kills and stops then hit a queue of waiters too (a
-- killed waiter's entry must expire, a stopped one's must not block the rest).
local cmpxchg = require "cmpxchg"
local helpers = require "spec.helpers"
local torture = require "spec.support.torture"

local function check(name, fig)
    io.stderr:write(torture.report(name, fig))
    assert.same({}, fig.problems)
    assert.equal(fig.expected, fig.acquisitions)
    assert.equal(0, fig.overlaps)
    assert.equal(0, fig.order)
    assert.equal(0, fig.stale_accepted)
    assert.equal(0, fig.bad_refusals)
    assert.equal(0, fig.write_failures)
    -- every planned kill and stop hit a holder mid-section
    assert.equal(fig.planned, fig.done_events)
    assert.equal(fig.planned, fig.kills_mid + fig.stops_mid)
    -- a lease left by a killed holder, or outlived by a stopped one, is taken over
    -- by the next to enter its lock or permit
    assert.is_true(fig.takeovers >= fig.kills_reentered + fig.stale_expected,
        ("%d takeovers for %d kills (%d entered again) and %d stops"):format(fig.takeovers,
            fig.kills_mid, fig.kills_reentered, fig.stale_expected))
    -- the late writes of stopped holders: refused (one applied just before its
    -- pause comes in the resource's order, which stale_accepted checks)
    assert.is_true(fig.stale_refused >= 1, "no late write of a paused holder was refused")
end

local function check_semaphore(name, fig, permits)
    check(name, fig)
    assert.equal(0, fig.too_many)
    assert.equal(permits, fig.max_holders)     -- reached, never passed
end

local function etcd_leader_kill()
    local job = assert(helpers.popen("env -u LD_PRELOAD sh -c "
        .. "'leader=$(scripts/etcd-cluster kill-leader) && sleep 2 && "
        .. "scripts/etcd-cluster restart \"$leader\" && echo \"m$leader restarted\"' 2>&1"))
    return function()
        local out = job:read("*a")
        assert(helpers.pclose(job), "the leader kill failed: " .. out)
        return "leader " .. out:gsub("%s+$", ""):match("[^\n]*$") .. " after a kill"
    end
end

--- Runs the torture of `ctx` on a backend ("embedded", "ravendb", "etcd": its
-- leader killed mid-run) and returns its figures.
local function torture_on(backend, ctx)
    if backend == "embedded" then
        local path = helpers.tmpdb()
        ctx.target, ctx.open = path, function() return cmpxchg.open(path) end
        local fig = torture.run(ctx)
        helpers.cleanup()
        return fig
    elseif backend == "ravendb" then
        local harness = require "spec.support.ravendb_harness"
        local server = harness.server()
        local db = harness.create_database(server)
        ctx.target = server.urls[1] .. "#" .. db
        ctx.open = function() return cmpxchg.open(server.urls, { database = db }) end
        local fig = torture.run(ctx)
        harness.delete_database(server, db)
        return fig
    end
    local harness = require "spec.support.etcd_harness"
    local cluster = harness.cluster()
    local prefix = harness.fresh_prefix()
    ctx.target = table.concat(cluster.endpoints, ",") .. "#" .. prefix
    ctx.open = function()
        return cmpxchg.open(cluster.endpoints, { database = prefix, timeout = 3 })
    end
    ctx.disturb = etcd_leader_kill      -- in the background: kills and stops go on meanwhile
    local fig = torture.run(ctx)
    assert.is_truthy(fig.disturbed_at)
    return fig
end

local BACKENDS = { { "embedded", "embedded" }, { "ravendb", "ravendb emulator" },
                   { "etcd", "etcd cluster, its leader killed mid-run" } }

describe("semaphore torture (3 permits)", function()
    local PERMITS, ROUNDS = 3, 30
    for _, b in ipairs(BACKENDS) do
        it(b[2], function()
            local name = b[1] .. " semaphore"
            check_semaphore(name, torture_on(b[1], { name = name, permits = PERMITS,
                rounds = ROUNDS }), PERMITS)
        end)
    end
end)

describe("lock torture", function()
    for _, b in ipairs(BACKENDS) do
        it(b[2], function()
            check(b[1], torture_on(b[1], { name = b[1] }))
        end)
    end
end)

describe("fair lock torture", function()
    for _, b in ipairs(BACKENDS) do
        it(b[2], function()
            local name = b[1] .. " fair"
            check(name, torture_on(b[1], { name = name, fair = true }))
        end)
    end
end)
