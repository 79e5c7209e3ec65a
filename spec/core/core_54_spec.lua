-- The C core's `<close>` support (Lua 5.4 syntax: this file runs only there; the
-- other Luas' runs skip *_54_spec.lua).
local core = require "cmpxchg.core"
local helpers = require "spec.helpers"

describe("cmpxchg.core with <close>", function()
    local path

    before_each(function() path = helpers.tmpdb() end)
    after_each(helpers.cleanup)

    it("<close> closes an embedded handle", function()
        local h = assert(core.embedded_open(path))
        do local x <close> = h end -- luacheck: ignore 211
        assert.equal("cmpxchg.Embedded (closed)", tostring(h))
    end)
end)
