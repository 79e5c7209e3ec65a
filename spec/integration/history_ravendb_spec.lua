-- The linearizability checker (spec/support/history) over the RavenDB
-- emulator under faults: 8 client processes doing random get, create,
-- compare-and-set, stale put and delete on 3 keys for about 30 s, while the
-- node the clients use is stopped (its connections reset) with writes in
-- flight and started again, and replies to writes are dropped after the
-- write was applied. Every key's history must be a valid versioned
-- compare-and-set register.
local core = require "cmpxchg.core"
local harness = require "spec.support.ravendb_harness"
local helpers = require "spec.helpers"
local run = require "spec.support.history.run"

local server = harness.server()
local emulator_only = server.real and pending or it   -- real servers take no fault injection

describe("history under faults", function()
    emulator_only("ravendb emulator: nodes stopped and started, replies lost after the write", function()
        local db = harness.create_database(server)
        local control = function(method, path, body) return harness.control(server, method, path, body) end
        --- The node most of the last requests went to: the one clients prefer.
        local function busiest()
            local counts, best = {}, 0
            local requests = control("GET", "/state").requests
            for i = math.max(1, #requests - 100), #requests do
                local node = requests[i].node
                counts[node] = (counts[node] or 0) + 1
                if counts[node] > (counts[best] or 0) then best = node end
            end
            return best
        end
        local drops, stops = 0, 0
        local ok, fig = pcall(run.with, { name = "ravendb", target = server.urls[1] .. "#" .. db,
            seconds = 30, think = 10 }, function(r)
                for round = 1, 3 do
                    r:pace(round * 8 - 5)
                    -- a reply lost after the write was applied: lands on the next write
                    for _, method in ipairs({ "PUT", "DELETE" }) do
                        control("POST", "/faults", { action = "drop_after_apply", method = method,
                            path_contains = "/cmpxchg", count = 1 })
                        local f = r:fault("drop", ("the reply to a %s, after applying it"):format(method))
                        helpers.wait_until(function()
                            return #control("GET", "/faults").faults == 0
                        end, 60, "the dropped reply to land")
                        f.met, drops = 1, drops + 1
                    end
                    -- the node in use stopped while writes are in flight
                    local landed
                    for _ = 1, 5 do
                        r:writes_in_flight(2, "before stopping a node")
                        local node = busiest()
                        local before = core.monotime()
                        control("POST", ("/nodes/%d/stop"):format(node))
                        local f = r:fault("stop", ("node %d, the one in use"):format(node), before)
                        r:progress(40, "while a node is stopped")
                        control("POST", ("/nodes/%d/start"):format(node))
                        landed = r:landed(f)
                        if landed then break end
                    end
                    assert(landed, "no node stop met a request in flight")
                    stops = stops + 1
                end
            end)
        control("DELETE", "/faults")
        for i = 0, #server.urls - 1 do control("POST", ("/nodes/%d/start"):format(i)) end
        assert(ok, fig)
        harness.delete_database(server, db)
        io.stderr:write(run.summary("ravendb", fig))
        assert.is_true(fig.result.ok, fig.report)
        assert.same({ 6, 3 }, { drops, stops })
        assert.is_true(fig.ops > 1000, fig.ops .. " operations")
    end)
end)
