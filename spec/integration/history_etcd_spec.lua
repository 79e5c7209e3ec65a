-- The linearizability checker (spec/support/history) over a 3-member etcd
-- cluster under faults: 8 client processes doing random get, create,
-- compare-and-set, stale put and delete on 3 keys for 20 s or more, while
-- the leader is SIGKILLed with writes in flight (and restarted), then the next
-- leader SIGSTOPped (and resumed), twice. Every key's history must be a valid
-- versioned compare-and-set register: a write whose outcome the backend could
-- not settle must say so (timeout), never answer true or false by guess
-- (issue 14, defect 2).
local core = require "cmpxchg.core"
local harness = require "spec.support.etcd_harness"
local helpers = require "spec.helpers"
local json = require "cmpxchg.json"
local run = require "spec.support.history.run"

describe("history under faults", function()
    it("etcd cluster: the leader killed, then the next one paused", function()
        local cluster = harness.cluster()
        local prefix = harness.fresh_prefix()
        local kills, pauses = 0, 0
        -- the members' process ids, from the script (slow: read between faults)
        local pids
        local function read_pids()
            pids = {}
            for m, pid in cluster.run("status"):gmatch("m(%d) (%d+) ") do
                pids[tonumber(m)] = tonumber(pid)
            end
        end
        -- the leader, asked of the members themselves (the script's answer
        -- takes seconds on a busy machine)
        local http = core.http_new()
        local function leader()
            local ids, lead = {}, nil
            for i, url in ipairs(cluster.endpoints) do
                local status, body = http:request("POST", url:gsub("^etcd", "http")
                    .. "/v3/maintenance/status", "{}", nil, 2)
                local reply = status == 200 and json.decode(body)
                if type(reply) == "table" and type(reply.header) == "table" then
                    ids[reply.header.member_id] = i - 1
                    lead = lead or reply.leader
                end
            end
            return lead and ids[lead]
        end
        --- Sends `signal` to the leader with writes in flight, waits until the
        -- clients went on, then has the script `heal` it ("restart" or
        -- "resume"); again until a signal meets requests in flight.
        local function inject(r, signal, heal)
            for _ = 1, 5 do
                read_pids()
                local m = helpers.wait_until(leader, 30, "a leader")
                r:writes_in_flight(4, "before SIG" .. signal)
                local before = core.monotime()
                helpers.kill(assert(pids[m], "no pid for m" .. m), signal)
                local f = r:fault("SIG" .. signal, ("the leader, m%s, then %s"):format(m, heal),
                    before)
                r:progress(40, "after SIG" .. signal)
                cluster.run(heal .. " " .. m)
                if r:landed(f) then return end
            end
            error("SIG" .. signal .. " never met a request in flight")
        end
        local ok, fig = pcall(run.with, { name = "etcd", seconds = 20, think = 10,
            target = table.concat(cluster.endpoints, ",") .. "#" .. prefix }, function(r)
                r:pace(2)
                for _ = 1, 2 do
                    inject(r, "KILL", "restart")
                    kills = kills + 1
                    inject(r, "STOP", "resume")
                    pauses = pauses + 1
                end
            end)
        cluster.run("start")            -- every member up and healthy for the next spec
        assert(ok, fig)
        io.stderr:write(run.summary("etcd", fig))
        assert.is_true(fig.result.ok, fig.report)
        assert.same({ 2, 2 }, { kills, pauses })
        assert.is_true(fig.ops > 1000, fig.ops .. " operations")
    end)
end)
