--- A discrete-event simulation of several clients on one fake clock: each
-- client is a coroutine, and the runtime's sleep (the library's one way to
-- wait) yields to a scheduler that resumes the client due first and moves
-- the clock to its time. Exact and fast tests of waiting recipes (fair
-- queues, semaphores, elections) with real interleavings and no real time.
--   local sim = require("spec.support.sim").new(wall0)
--   local c = sim.spawn("a", function() ... end)   -- starts now
--   sim.run(limit)        -- until every client ended (or limit seconds)
--   sim.stop(c, seconds)  -- c is not resumed for that long (SIGSTOP)
--   sim.kill(c)           -- c is never resumed again (SIGKILL)
--   sim.restore()         -- the real clock back
-- The runtime's random numbers come from a seeded generator, so a run is
-- the same every time. An error in a client is raised by sim.run.
local runtime = require "cmpxchg.runtime"

local M = {}

function M.new(wall0, seed)
    local saved = { monotime = runtime.monotime, time = runtime.time, sleep = runtime.sleep,
                    random = runtime.random }
    local sim = { now = 0, clients = {}, order = 0 }
    local by_co = {}
    local state = seed or 12345
    runtime.monotime = function() return sim.now end
    runtime.time = function() return (wall0 or 0) + sim.now end
    runtime.random = function()
        state = (state * 1103515245 + 12345) % 2147483648
        return state / 2147483648
    end
    runtime.sleep = function(s)
        assert(s >= 0, "negative sleep")
        local c = by_co[coroutine.running() or false]
        if c == nil then            -- the test itself: time simply passes
            sim.now = sim.now + s
            return
        end
        c.wake = sim.now + s
        coroutine.yield()
    end

    function sim.spawn(name, fn, ...)
        local args = { n = select("#", ...), ... }
        local unpack = table.unpack or unpack     -- luacheck: ignore 143
        local c = { name = name, wake = sim.now, done = false }
        sim.order = sim.order + 1
        c.seq = sim.order
        c.co = coroutine.create(function() c.result = { fn(unpack(args, 1, args.n)) } end)
        by_co[c.co] = c
        sim.clients[#sim.clients + 1] = c
        return c
    end

    function sim.stop(c, seconds) c.wake = math.max(c.wake, sim.now) + seconds end
    function sim.kill(c) c.done, c.killed = true, true end

    --- Runs the clients until all have ended or the clock passes `limit`.
    -- Clients that keep waking at one instant (sleeps of 0) would spin
    -- forever on the fake clock: that is a busy loop, raised as an error
    -- after SPIN wakes with the clock standing still.
    local SPIN = 20000
    function sim.run(limit)
        limit = limit or 3600
        local spins, last = 0, nil
        while true do
            local next_c
            for _, c in ipairs(sim.clients) do
                if not c.done and (next_c == nil or c.wake < next_c.wake
                        or (c.wake == next_c.wake and c.seq < next_c.seq)) then
                    next_c = c
                end
            end
            if next_c == nil then return true end
            if next_c.wake > limit then return false end
            sim.now = math.max(sim.now, next_c.wake)
            if sim.now == last then
                spins = spins + 1
                if spins > SPIN then
                    error(("client %s spins: %d wakes at %g s with the clock standing still")
                        :format(next_c.name, spins, sim.now), 0)
                end
            else
                spins, last = 0, sim.now
            end
            local ok, err = coroutine.resume(next_c.co)
            if not ok then error(("client %s: %s"):format(next_c.name, tostring(err)), 0) end
            if coroutine.status(next_c.co) == "dead" then next_c.done = true end
        end
    end

    function sim.restore()
        for k, v in pairs(saved) do runtime[k] = v end
    end

    return sim
end

return M
