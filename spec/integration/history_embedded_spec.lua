-- The linearizability checker (spec/support/history) over the embedded store
-- under faults: 8 client processes doing random get, create, compare-and-set,
-- stale put and delete on 3 keys of one file for about 30 s, while clients
-- caught in the middle of a write are SIGKILLed (a new one takes over) or
-- SIGSTOPped until the others have gone on, then resumed. Every key's
-- history must be a valid versioned compare-and-set register.
local cmpxchg = require "cmpxchg"
local helpers = require "spec.helpers"
local run = require "spec.support.history.run"

describe("history under faults", function()
    it("embedded: clients SIGKILLed and SIGSTOPped in the middle of writes", function()
        local path = helpers.tmpdb()
        assert(cmpxchg.open(path)):close()          -- the file, before 8 processes race for it
        local kills, stops = 0, 0
        local ok, fig = pcall(run.with, { name = "embedded", target = path, seconds = 30,
            think = 20 },
            function(r)
                for round = 1, 3 do
                    r:pace(round * 8 - 4)
                    local c = r:stop_mid_write()
                    local f = r:fault("SIGKILL", ("client %s in the middle of a %s"):format(c.proc,
                        c.last))
                    assert.is_truthy(r:kill(c), "the killed client was not in the middle of a call")
                    f.met, kills = 1, kills + 1
                    r:progress(20, "after a kill")
                    c = r:stop_mid_write()
                    f = r:fault("SIGSTOP", ("client %s in the middle of a %s, until the others did "
                        .. "40 operations"):format(c.proc, c.last))
                    r:progress(40, "while a client is stopped")
                    r:resume(c)
                    f.met, stops = 1, stops + 1
                end
            end)
        helpers.cleanup()
        assert(ok, fig)
        io.stderr:write(run.summary("embedded", fig))
        assert.is_true(fig.result.ok, fig.report)
        assert.same({ 3, 3 }, { kills, stops })
        assert.equal(3, fig.killed)                 -- each kill left an operation unfinished
        assert.is_true(fig.unknown >= 3)
        assert.is_true(fig.ops > 1000, fig.ops .. " operations")
    end)
end)
