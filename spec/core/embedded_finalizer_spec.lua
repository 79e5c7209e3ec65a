-- A finalizer that uses an embedded store while that store is inside one of
-- its own calls: the collector runs finalizers from inside the Lua API calls
-- that allocate, and the store makes such calls (pushing the value it read)
-- while a statement is stepped and a write transaction is open. A write from
-- there used to roll back the outer call's transaction and write in its
-- middle, and the outer put then answered "io: cannot commit". Now the inner
-- call raises, and the outer one is untouched.
local helpers = require "spec.helpers"

describe("an embedded store used from a finalizer", function()
    after_each(helpers.cleanup)

    it("refuses the call made inside one of its own, which goes on unharmed", function()
        local out, code = helpers.run("spec/support/finalizer_reentry.lua", { helpers.tmpdb() })
        assert.equal(0, code, out)
        local wrong, refused, ok, other = out:match("wrong (%d+) refused (%d+) ok (%d+) other (%d+)")
        assert.truthy(wrong, out)
        assert.equal("0", wrong, out)
        assert.equal("0", other, out)
        assert.is_true(tonumber(ok) > 0, out)
        -- Lua 5.2's collector runs no finalizer inside these calls; the others do
        if _VERSION ~= "Lua 5.2" then
            assert.is_true(tonumber(refused) > 0, out)
        end
    end)
end)
