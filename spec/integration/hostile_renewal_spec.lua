-- The renewal thread against a hostile server (issue 14, defect 5): it reads
-- its replies through the same bounded transport as every call, so a gzip
-- bomb in answer to each renewal neither grows the process without bound nor
-- keeps the lock held: the renewals fail, and the lease is given up, saying
-- why, when it runs out. (The old thread, with its own unbounded buffer, grew
-- to 1.06 GB on a 1 MB bomb.)
local cjson = require "cjson"
local harness = require "spec.support.hostile_harness"
local helpers = require "spec.helpers"

describe("the renewal thread against a hostile server", function()
    local server

    setup(function() server = harness.start() end)
    teardown(function() if server then server.stop() end end)

    it("gives up a lease whose renewals are answered with gzip bombs, in bounded memory", function()
        local url = ("http://127.0.0.1:%d"):format(server.ports.rdb_renew_bomb)
        local p = assert(helpers.popen(("timeout -s KILL 120 %s 2>&1"):format(
            helpers.lua_command("spec/support/hostile_renewal.lua", { url }))))
        local out = p:read("*a")
        local _, _, code = helpers.pclose(p)
        assert.equal(0, code, "the child died: " .. out)
        local r = cjson.decode(out:match("([^\n]+)\n*$"))
        assert.is_false(r.held)
        assert.matches("^lost: renewal failed: http: .*too large", r.lost)
        -- one reply at a time, cut at 256 MB inflated, freed after its request
        assert.is_true(r.grew_mb < 600, ("grew by %.0f MB"):format(r.grew_mb))
        assert.is_true(r.elapsed < 60, ("took %.1f s"):format(r.elapsed))
    end)
end)
