-- NUL bytes: no key, prefix, path or namespace may hold one. Stores and
-- servers cut C strings at NUL, so "a\0b" was stored as "a" (listed under a key
-- get could not find), and two namespaces or paths that differ after a NUL were
-- one. Every backend refuses them with a clear error, before any I/O.
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"
local helpers = require "spec.helpers"

local KEY_ERROR = "key must not contain a NUL byte"

local function nul_contract(ctx)
    describe("NUL bytes (" .. ctx.name .. ")", function()
        local st

        before_each(function() st = assert(ctx.open()) end)
        after_each(function()
            st:close()
            helpers.cleanup()
        end)

        it("are refused in keys by every call that takes one, and nothing is stored", function()
            for _, key in ipairs({ "a\0b", "\0", "a\0", "\0a" }) do
                assert.has_error(function() st:put(key, 1, 0) end,
                    "bad argument #1 to 'put' (" .. KEY_ERROR .. ")")
                assert.has_error(function() st:get(key) end,
                    "bad argument #1 to 'get' (" .. KEY_ERROR .. ")")
                assert.has_error(function() st:delete(key, 1) end,
                    "bad argument #1 to 'delete' (" .. KEY_ERROR .. ")")
                assert.has_error(function() st:get_many({ "ok", key }) end,
                    "bad argument #1 to 'get_many' (key #2: " .. KEY_ERROR .. ")")
                assert.has_error(function() st:update(key, function() return 1 end) end,
                    "bad argument #1 to 'update' (" .. KEY_ERROR .. ")")
                assert.has_error(function() st:lock(key, { timeout = 0 }) end,
                    "bad argument #1 to 'lock' (" .. KEY_ERROR .. ")")
            end
            assert.same({}, st:list(""))
        end)

        it("are refused in a list prefix, which no key could start with", function()
            assert.is_true((st:put("a", 1, 0)))
            assert.has_error(function() st:list("a\0") end,
                "bad argument #1 to 'list' (prefix is a string with a NUL byte)")
            assert.has_error(function() cmpxchg.locks(st, "a\0") end,
                "bad argument #2 to 'locks' (prefix is a string with a NUL byte)")
            local items = st:list("a")
            assert.equal(1, #items)
            assert.is_true((st:delete("a", items[1].index)))
        end)
    end)
end

require("spec.support.backends").each(nul_contract, teardown)

describe("NUL bytes (the embedded store's own names and the core)", function()
    local path

    before_each(function() path = helpers.tmpdb() end)
    after_each(helpers.cleanup)

    it("key_problem names them; fold_key refuses them", function()
        assert.equal(KEY_ERROR, core.key_problem("a\0b"))
        assert.same({ nil, "a string with a NUL byte" }, { core.fold_key("a\0") })
    end)

    it("are refused in a path or a namespace (two tenants would share one)", function()
        assert.has_error(function() cmpxchg.open(path .. "\0tenant-a") end,
            "bad argument #1 to 'open' (path must not contain a NUL byte)")
        assert.has_error(function() cmpxchg.open(path, { database = "tenant\0a" }) end,
            "bad argument #2 to 'open' (option 'database' must not contain a NUL byte)")
        assert.is_false(helpers.file_exists(path))
        assert.has_error(function() core.embedded_open(path .. "\0x") end)
        assert.has_error(function() core.embedded_open(path, { namespace = "t\0a" }) end)
        assert.has_error(function() core.embedded_open(path, { sync = "full\0" }) end)
    end)

    it("are refused by the C store itself, in keys and prefixes", function()
        local h = assert(core.embedded_open(path))
        assert.has_error(function() h:put("a\0b", "1", 0) end)
        assert.has_error(function() h:get("a\0b") end)
        assert.has_error(function() h:delete("a\0b", 1) end)
        assert.has_error(function() h:get_many({ "a\0b" }) end)
        assert.has_error(function() h:list("a\0") end)
        assert.same({}, h:list(""))
        h:close()
    end)
end)
