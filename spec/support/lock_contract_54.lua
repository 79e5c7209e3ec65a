--- The lock examples that need `<close>` (Lua 5.4 syntax): loaded only where it
-- parses, by spec.support.lock_contract (the same t, ctx).
local helpers = require "spec.helpers"

return function(t, ctx)
    local describe, it, before_each, after_each, assert =
        t.describe, t.it, t.before_each, t.after_each, t.assert

    describe("locks with <close> (" .. ctx.name .. ")", function()
        local st

        before_each(function() st = assert(ctx.open()) end)
        after_each(function()
            st:close()
            helpers.cleanup()
        end)

        it("is exclusive, gives increasing tokens and releases with <close>", function()
            local first
            do
                local l <close> = assert(st:lock("printers/first-floor"))
                first = l:token()
                assert.is_true(l:is_held())
                assert.is_nil((st:lock("printers/first-floor", { timeout = 0 })))
            end
            local l2 <close> = assert(st:lock("printers/first-floor", { timeout = 0 }))
            assert.is_true(l2:token() > first)
        end)
    end)
end
