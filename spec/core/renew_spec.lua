-- The renewal thread's C contract (csrc/renew.c): the Renewer of a store and
-- the Renewal of each lock, their closed states, and finalizers that never
-- wait for a request in flight. What the thread writes is renew_worker.lua's,
-- checked end to end by the lock contract of every backend.
local core = require "cmpxchg.core"
local helpers = require "spec.helpers"
local json = require "cmpxchg.json"

local function setup_of(target, options)
    return assert(json.encode({ target = target, options = options or {} }))
end

local SETTINGS = assert(json.encode({ key = "k", owner = "o", options = { ttl = 30,
    clock_skew = 0, expires_field = "ExpiresAt", expires_grace = 60 } }))

describe("cmpxchg.core.renewer_start", function()
    local base, stop

    setup(function() base, stop = helpers.http_test_server() end)
    teardown(function() stop() end)

    it("refuses bad arguments", function()
        assert.has_error(function() core.renewer_start() end)
        assert.has_error(function() core.renewer_start({}) end)
        local r = core.renewer_start(setup_of(":memory:"))
        assert.has_error(function() r:add() end)
        assert.has_error(function() r:add(SETTINGS, {}, 2) end)
        assert.has_error(function() r:add(SETTINGS, 1, "soon") end)
        assert.has_error(function() r.add({}, SETTINGS, 1, 2) end)
        assert.is_true(r:close())
    end)

    it("hands a lock's index and lease end back until a renewal changes them", function()
        local path = helpers.tmpdb()
        local r = core.renewer_start(setup_of(path))
        -- the first renewal due in 30 s: nothing renews during the test (due
        -- at once, the thread renewed before a slow caller stopped it)
        local renewal = r:add(SETTINGS, 7, 12345.5, 30)
        local index, valid, lost, reason, renewals = renewal:state()
        assert.same({ 7, 12345.5, false, nil, 0 }, { index, valid, lost, reason, renewals })
        assert.same({ 7, 12345.5, false, nil, 0 }, { renewal:stop() })
        assert.same({ 7, 12345.5, false, nil, 0 }, { renewal:stop() })     -- idempotent
        assert.same({ 7, 12345.5, false, nil, 0 }, { renewal:state() })
        assert.matches("^cmpxchg.Renewal %(stopped%)$", tostring(renewal))
        assert.is_true(r:close())
        helpers.cleanup()
    end)

    it("closes idempotently, raises on use after close, and is a to-be-closed value", function()
        local r = core.renewer_start(setup_of(helpers.tmpdb()))
        assert.matches("^cmpxchg.Renewer %(0x", tostring(r))
        local renewal = r:add(SETTINGS, 1, core.monotime() + 30, 30)
        assert.is_true(r:close())
        assert.is_true(r:close())
        assert.equal("cmpxchg.Renewer (closed)", tostring(r))
        assert.has_error(function() r:add(SETTINGS, 1, 2) end, "attempt to use a closed renewer")
        -- the lock's renewal outlives its renewer: readable, and nothing renews it
        assert.equal(1, (renewal:state()))
        assert.equal(1, (renewal:stop()))
        local mt = getmetatable(r)
        assert.is_function(mt.__gc)
        assert.is_function(mt.__close)
        helpers.cleanup()
    end)

    it("a store it cannot set up ends every renewal as lost, saying why", function()
        local r = core.renewer_start("{not json")
        local renewal = r:add(SETTINGS, 3, core.monotime() + 30)
        helpers.wait_until(function() return select(3, renewal:state()) end, 10,
            "the failed thread seen")
        local _, _, lost, reason = renewal:state()
        assert.is_true(lost)
        assert.matches("^lost: the renewal thread", reason)
        local late = r:add(SETTINGS, 4, core.monotime() + 30)
        assert.same({ 4, true }, { late:state(), (select(3, late:state())) })
        assert.matches("^lost: the renewal thread has ended", select(4, late:state()))
        r:close()
    end)

    it("is collected without waiting for its thread's request in flight", function()
        -- the thread opens a RavenDB store at a node that never answers: its
        -- first request hangs for the store's timeout (10 s), and neither the
        -- Renewer's nor a Renewal's finalizer may wait for it
        local weak = setmetatable({}, { __mode = "v" })
        do
            local r = core.renewer_start(setup_of(base .. "/hang", { database = "db", timeout = 10 }))
            weak[1] = r
            weak[2] = r:add(SETTINGS, 1, core.monotime() + 30)
        end
        core.sleep(0.2)             -- the thread is inside its request by now, or soon
        local started = core.monotime()
        collectgarbage()
        collectgarbage()
        local took = core.monotime() - started
        assert.is_nil(weak[1])
        assert.is_nil(weak[2])
        assert.is_true(took < 2, ("collection took %.3f s"):format(took))
    end)
end)

-- (no "renew" in these names: the TSan pass runs what matches it, and these
-- children load the plain interpreter, which cannot load its core)
describe("a process exit", function()
    it("is clean while a lock's thread starts, works or ends", function()
        -- the thread runs the library's code after the Lua states that loaded
        -- it closed and dlclose'd it: before the library was pinned, such an
        -- exit crashed (SIGSEGV in unmapped code) about 1 run in 16 of this
        -- spec and 1 in 25 of these children
        local path = helpers.tmpdb()
        local script = os.tmpname()
        helpers.write_file(script, [[
            local cmpxchg = require "cmpxchg"
            local store = assert(cmpxchg.open(arg[1]))
            local locks = {}
            for i = 1, 3 do
                locks[i] = assert(store:lock(arg[3] .. "/" .. i, { ttl = 0.3, auto_renew = true }))
            end
            require("cmpxchg.core").sleep(tonumber(arg[2]))
            os.exit(0, true)
        ]])
        local failed = {}
        for i = 1, 60 do
            -- around the thread's start (50 ms before the first renewal, due
            -- at 100 ms) and its first renewals
            local delay = ("%.2f"):format(0.03 + (i % 8) * 0.01)
            local child = helpers.start(script, { path, delay, "run" .. i })
            local out = child:read("*a")
            local ok, how, code = helpers.pclose(child)
            if not ok then
                failed[#failed + 1] = ("run %d (%s s): %s %s %s"):format(i, delay, tostring(how),
                    tostring(code), out)
            end
        end
        os.remove(script)
        helpers.cleanup()
        assert.same({}, failed)
    end)
end)
