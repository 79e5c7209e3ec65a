-- The embedded backend's Lua face (lua/cmpxchg/embedded.lua) over a fake C
-- handle: what each answer of the C store becomes, errors above all. A failed
-- get (nil, message, code) was taken for a stored value, so "io" or "timeout"
-- came back as "decode: stored value ... is not JSON".
local cmpxchg = require "cmpxchg"
local helpers = require "spec.helpers"

local unpack = table.unpack or unpack     -- luacheck: ignore 143

describe("embedded backend over a fake C handle (unit)", function()
    local st, answers

    before_each(function()
        st = assert(cmpxchg.open(":memory:"))
        answers = {}
        local real = st.backend.handle
        st.backend.handle = setmetatable({}, { __index = function(_, method)
            return function(_, ...)
                local answer = answers[method]
                if answer then return unpack(answer, 1, answer.n) end
                return real[method](real, ...)
            end
        end })
    end)
    after_each(helpers.cleanup)

    local function answer(method, ...)
        answers[method] = { n = select("#", ...), ... }
    end

    it("get passes the C store's errors on as they are", function()
        answer("get", nil, "io: /x.db: out of memory", "io")
        assert.same({ nil, "io: /x.db: out of memory", "io" }, { st:get("k") })
        answer("get", nil, "timeout: /x.db is locked by another writer (database is locked)",
            "timeout")
        assert.same({ nil, "timeout: /x.db is locked by another writer (database is locked)",
                      "timeout" }, { st:get("k") })
    end)

    it("get decodes what is stored, and tells an absent key and a bad value", function()
        answer("get", 7, '{"a":1}')
        assert.same({ { a = 1 }, 7 }, { st:get("k") })
        answer("get", 0, nil)
        assert.same({ nil, 0 }, { st:get("k") })
        answer("get", 7, "{broken")
        local v, err, code = st:get("k")
        assert.is_nil(v)
        assert.equal("decode", code)
        assert.matches("^decode: stored value of 'k' is not JSON", err)
    end)

    it("inside nginx, get tries a busy file again after a pause", function()
        local runtime = require "cmpxchg.runtime"
        local saved = { nginx = runtime.nginx, can_yield = runtime.can_yield,
                        sleep = runtime.sleep, monotime = runtime.monotime }
        local clock, slept = 0, {}
        runtime.nginx = true
        runtime.can_yield = function() return true end
        runtime.monotime = function() return clock end
        runtime.sleep = function(s)
            slept[#slept + 1] = s
            clock = clock + s
            answer("get", 7, '"v"')         -- free by then
        end
        answer("get", nil, "timeout: /x.db is locked by another writer", "timeout")
        local ok, value, index = pcall(st.get, st, "k")
        for k, v in pairs(saved) do runtime[k] = v end
        assert.is_true(ok, value)
        assert.same({ "v", 7 }, { value, index })
        assert.equal(1, #slept)
    end)

    it("the other calls pass errors on as they are", function()
        for _, call in ipairs({
            { "put", function() return st:put("k", 1, 0) end },
            { "delete", function() return st:delete("k", 1) end },
            { "get_many", function() return st:get_many({ "k" }) end },
            { "list", function() return st:list("") end },
        }) do
            answer(call[1], nil, "io: /x.db: disk I/O error", "io")
            assert.same({ nil, "io: /x.db: disk I/O error", "io" }, { call[2]() }, call[1])
        end
    end)
end)
