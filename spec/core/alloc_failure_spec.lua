-- The allocation-failure checker (spec/support/alloc/host.c, make alloc-check):
-- every operation of spec/support/alloc/driver.lua on an embedded store, with
-- the Nth Lua allocation failing for every N (in three ways), then the Nth
-- SQLite allocation, under ASan, UBSan and LeakSanitizer. It builds the ASan
-- core (as the asan pass does) and runs in that pass only (scripts/run-tests):
-- once is enough, whatever the pass.
local helpers = require "spec.helpers"

describe("allocation failures", function()
    it("leave every embedded store operation clean at every failure point", function()
        local out = helpers.sh("make --no-print-directory alloc-check")
        local ops, points = out:match("alloc%-check: (%d+) operations in 4 passes, "
            .. "(%d+) failure points, all clean")
        assert.truthy(ops, out)
        -- the operations the issue names, each met by failures in every pass
        for _, op in ipairs({ "open", "put_taken", "list", "lock" }) do
            for _, pass in ipairs({ "Nth on", "Nth only", "Nth twice", "SQLite Nth on" }) do
                local n = out:match("\n" .. op .. " +" .. pass .. " +(%d+) failure points")
                assert.truthy(n and tonumber(n) > 0, op .. ", " .. pass .. ":\n" .. out)
            end
        end
        assert.is_true(tonumber(points) >= tonumber(ops), out)
    end)
end)
