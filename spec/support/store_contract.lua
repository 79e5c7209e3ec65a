--- The compare-exchange contract every backend must keep: one shared set of
-- examples, run by spec/integration/*_spec.lua against each backend.
--   require("spec.support.store_contract")(t, ctx)
-- t: busted's describe/it/before_each/after_each/assert
-- ctx.open(): a fresh, empty store; ctx.name: the backend's name.
local cmpxchg = require "cmpxchg"

return function(t, ctx)
    local describe, it, before_each, after_each, assert =
        t.describe, t.it, t.before_each, t.after_each, t.assert

    describe("compare-exchange contract (" .. ctx.name .. ")", function()
        local st

        before_each(function() st = assert(ctx.open()) end)
        after_each(function() st:close() end)

        it("put with index 0 creates only when the key is absent", function()
            local ok, index, value = st:put("users/1", { Name = "Ada" }, 0)
            assert.is_true(ok)
            assert.is_true(index > 0)
            assert.same({ Name = "Ada" }, value)
            local ok2, index2, current = st:put("users/1", { Name = "Bob" }, 0)
            assert.is_false(ok2)
            assert.equal(index, index2)
            assert.same({ Name = "Ada" }, current)
        end)

        it("put with index N succeeds only when N is the current index", function()
            local _, i1 = st:put("k", "v1", 0)
            local ok, i2 = st:put("k", "v2", i1)
            assert.is_true(ok)
            assert.is_true(i2 > i1)
            local ok3, cur, value = st:put("k", "v3", i1)
            assert.is_false(ok3)
            assert.equal(i2, cur)
            assert.equal("v2", value)
            assert.same({ "v2", i2 }, { st:get("k") })
        end)

        it("put with an index above the current one fails and returns the current one", function()
            local _, idx = st:put("k", "v1", 0)
            assert.same({ false, idx, "v1" }, { st:put("k", "v2", idx + 1) })
            assert.same({ false, idx, "v1" }, { st:put("k", "v2", idx + 1000) })
            assert.same({ "v1", idx }, { st:get("k") })
        end)

        it("a non-zero index never creates an absent key", function()
            assert.same({ false, 0 }, { st:put("absent", "v", 17) })
            assert.same({ nil, 0 }, { st:get("absent") })
        end)

        it("every write gets a new index from one strictly increasing counter", function()
            local last = 0
            for i = 1, 10 do
                local _, idx = st:put("a/" .. i, i, 0)
                assert.is_true(idx > last)
                last = idx
                local ok, didx = st:delete("a/" .. i, idx)
                assert.is_true(ok)
                assert.is_true(didx > last)
                last = didx
            end
        end)

        it("returns every index as an integer, on every Lua", function()
            -- 42.0 == 42, so assert.equal cannot see a float; tostring can
            -- ("42.0" on 5.3+), and so can the URLs and logs it ends up in
            local function integer(i, what)
                assert.is_number(i, what)
                if math.type then assert.equal("integer", math.type(i), what) end
                assert.equal(("%d"):format(i), tostring(i), what)
            end
            local _, i1 = st:put("ints/a", { n = 1 }, 0)
            integer(i1, "put")
            integer(select(2, st:put("ints/a", 2, 0)), "put whose compare failed")
            integer(select(2, st:get("ints/a")), "get")
            integer(select(2, st:get("ints/none")), "get of an absent key")
            integer(st:get_many({ "ints/a", "ints/none" })["ints/a"].index, "get_many")
            integer(st:list("ints/")[1].index, "list")
            local _, i2 = st:update("ints/a", function() return 3 end)
            integer(i2, "update")
            integer(select(2, st:delete("ints/a", i1)), "delete whose compare failed")
            integer(select(2, st:delete("ints/a", i2)), "delete")
            integer(select(2, st:delete("ints/a", i2)), "delete of an absent key")
            local l = assert(st:lock("ints/lock"))
            integer(l:token(), "lock token")
            assert.is_true(l:extend(30))
            integer(l:token(), "extended lock token")
            assert.is_true(l:release())
        end)

        it("folds keys exactly as string.lower does, for every ASCII character", function()
            -- one key holding every printable character, written upper-case
            local chars = {}
            for b = 33, 126 do chars[#chars + 1] = string.char(b) end
            local key = "ascii/" .. table.concat(chars)
            local _, idx = st:put(key:upper(), "all", 0)
            assert.same({ "all", idx }, { st:get(key:lower()) })
            assert.same({ "all", idx }, { st:get(key) })
            assert.same({ false, idx, "all" }, { st:put(key:lower(), "again", 0) })
            -- the characters 32 apart that are not letters are different keys
            for b = 0x40, 0x5F do
                local c = string.char(b)
                if not c:match("%a") then
                    local upper, lower = "pair/" .. c, "pair/" .. string.char(b + 32)
                    assert.is_true((st:put(upper, b, 0)), upper)
                    assert.is_true((st:put(lower, b + 32, 0)), lower)
                    assert.equal(b, (st:get(upper)), upper)
                    assert.equal(b + 32, (st:get(lower)), lower)
                end
            end
        end)

        it("keys are case-insensitive", function()
            local _, idx = st:put("Users/ÉMILE", "x", 0)
            assert.same({ "x", idx }, { st:get("users/émile") })
            assert.same({ false, idx, "x" }, { st:put("USERS/émile", "y", 0) })
            assert.is_true((st:delete("USERS/ÉMILE", idx)))
        end)

        it("stores any JSON value", function()
            local values = {
                "text", "", "ünïcødé ✓", 42, -1.5, true, false, cmpxchg.null,
                { 1, 2, 3 }, { a = { b = { c = "deep" } }, list = { "x", "y" } },
            }
            for i, v in ipairs(values) do
                local key = "values/" .. i
                assert.is_true((st:put(key, v, 0)))
                local got = st:get(key)
                assert.same(v, got)
            end
            assert.is_true((st:put("values/empty", {}, 0)))
            assert.same({}, (st:get("values/empty")))
        end)

        it("get of an absent key is nil, 0", function()
            assert.same({ nil, 0 }, { st:get("nothing/here") })
        end)

        it("get_many returns present keys as asked, leaving absent ones out", function()
            local _, ia = st:put("m/A", "a", 0)
            local _, ib = st:put("m/b", { x = 1 }, 0)
            local map = st:get_many({ "m/a", "m/B", "m/c" })
            assert.same({ ["m/a"] = { value = "a", index = ia },
                          ["m/B"] = { value = { x = 1 }, index = ib } }, map)
            assert.same({}, st:get_many({}))
            assert.same({}, st:get_many({ "m/none" }))
        end)

        it("list returns a prefix in key order, case-insensitively, with paging", function()
            for _, k in ipairs({ "p/c", "p/A", "p/b", "q/a", "P/d" }) do
                assert.is_true((st:put(k, k, 0)))
            end
            -- RavenDB lists keys lower-cased (its storage keys): compare folded
            local function keys(items)
                local out = {}
                for i, item in ipairs(items) do
                    out[i] = item.key:lower()
                    assert.equal(item.key:lower(), item.value:lower())
                    assert.is_true(item.index > 0)
                end
                return out
            end
            assert.same({ "p/a", "p/b", "p/c", "p/d" }, keys(st:list("p/")))
            assert.same({ "p/a", "p/b", "p/c", "p/d" }, keys(st:list("P/")))
            assert.same({ "p/b", "p/c" }, keys(st:list("p/", { start = 1, page_size = 2 })))
            assert.same({}, keys(st:list("p/", { start = 10 })))
            assert.same({}, keys(st:list("zzz")))
            assert.is_true((st:put("p", "p", 0)))       -- a key equal to the prefix is in it
            assert.same({ "p", "p/a", "p/b", "p/c", "p/d" }, keys(st:list("P")))
            assert.same({ "p/a" }, keys(st:list("p/a")))
            assert.equal(6, #st:list(""))
            assert.equal(6, #st:list())
        end)

        it("pages through a large prefix", function()
            for i = 1, 250 do assert.is_true((st:put(("big/%04d"):format(i), i, 0))) end
            local seen, start = {}, 0
            repeat
                local page = st:list("big/", { start = start, page_size = 64 })
                for _, item in ipairs(page) do seen[#seen + 1] = item.value end
                start = start + #page
            until #page < 64
            assert.equal(250, #seen)
            for i = 1, 250 do assert.equal(i, seen[i]) end
        end)

        it("delete with an index below or above the current one fails and deletes nothing", function()
            local _, i1 = st:put("d", "v1", 0)
            local _, i2 = st:put("d", "v2", i1)
            assert.same({ false, i2, "v2" }, { st:delete("d", i1) })
            assert.same({ false, i2, "v2" }, { st:delete("d", i2 + 1) })
            assert.same({ "v2", i2 }, { st:get("d") })
        end)

        it("delete with index 0 fails and deletes nothing", function()
            assert.same({ false, 0 }, { st:delete("d", 0) })
            local _, idx = st:put("d", "v", 0)
            assert.same({ false, idx, "v" }, { st:delete("d", 0) })
            assert.same({ "v", idx }, { st:get("d") })
        end)

        it("takes an index given as an integral float, as lua-cjson decodes one", function()
            local ok1, i1 = st:put("f", "v1", 0.0)
            assert.is_true(ok1)
            local ok2, i2 = st:put("f", "v2", i1 + 0.0)
            assert.is_true(ok2)
            assert.is_true((st:delete("f", i2 + 0.0)))
            assert.same({ nil, 0 }, { st:get("f") })
        end)

        it("delete succeeds only on the current index and returns the deleted value", function()
            local _, idx = st:put("d", { v = 1 }, 0)
            local ok, cur, value = st:delete("d", idx + 1000)
            assert.same({ false, idx, { v = 1 } }, { ok, cur, value })
            local ok2, didx, deleted = st:delete("d", idx)
            assert.is_true(ok2)
            assert.is_true(didx > idx)
            assert.same({ v = 1 }, deleted)
            assert.same({ nil, 0 }, { st:get("d") })
            assert.same({ false, 0 }, { st:delete("d", idx) })
            assert.is_true((st:put("d", "again", 0)))     -- creatable again
        end)

        it("takes keys of exactly 512 bytes, multi-byte ones too", function()
            local ascii = ("k"):rep(512)
            local wide = ("é"):rep(256)                 -- 2 bytes each
            assert.is_true((st:put(ascii, 1, 0)))
            assert.is_true((st:put(wide, 2, 0)))
            assert.equal(1, (st:get(ascii)))
            assert.equal(2, (st:get(wide:upper())))
        end)

        it("update creates, then read-modify-writes on the index it read", function()
            local seen = {}
            local v1, i1 = st:update("counters/A", function(v)
                seen[#seen + 1] = v == nil and "absent" or v
                return { n = 1 }
            end)
            assert.same({ n = 1 }, v1)
            assert.same({ "absent" }, seen)
            assert.same({ { n = 1 }, i1 }, { st:get("counters/a") })
            local v2, i2 = st:update("COUNTERS/a", function(v) return { n = v.n + 1 } end)
            assert.same({ n = 2 }, v2)
            assert.is_true(i2 > i1)
            assert.same({ { n = 2 }, i2 }, { st:get("counters/a") })
            assert.is_true((st:delete("counters/a", i2)))
        end)

        it("update retries a lost race with the value the rival wrote", function()
            local _, i0 = st:put("counters/r", 10, 0)
            local calls = {}
            local value, index = st:update("counters/r", function(v)
                calls[#calls + 1] = v
                if #calls == 1 then      -- a rival writes between our read and our write
                    assert.is_true((st:put("counters/r", v + 5, i0)))
                end
                return v + 1
            end)
            assert.same({ 10, 15 }, calls)
            assert.equal(16, value)
            assert.same({ 16, index }, { st:get("counters/r") })
            assert.is_true((st:delete("counters/r", index)))
        end)

        it("update gives up with conflict after its retries, and leaves the key alone on nil", function()
            local _, index = st:put("counters/c", 0, 0)
            local calls = 0
            local value, err, code = st:update("counters/c", function(v)
                calls = calls + 1
                local ok, idx = st:put("counters/c", v + 100, index)   -- always a rival first
                assert.is_true(ok)
                index = idx
                return v + 1
            end, { retries = 2 })
            assert.is_nil(value)
            assert.equal("conflict", code)
            assert.matches("^conflict: 'counters/c' was changed by another writer at each of 3 attempts", err)
            assert.equal(3, calls)
            assert.same({ 300, index }, { st:get("counters/c") })
            assert.same({ 300, index }, { st:update("counters/c", function() return nil end) })
            assert.same({ nil, 0 }, { st:update("counters/none", function() end) })
            assert.same({ 300, index }, { st:get("counters/c") })
            assert.is_true((st:delete("counters/c", index)))
            assert.equal(0, #st:list(""))
        end)

        it("update writes with expires as put does, and lets an error raised by fn through", function()
            local expires = os.time() + 3600
            local value, index = st:update("counters/e", function() return "v" end,
                { expires = expires })
            assert.equal("v", value)
            assert.same({ "v", index }, { st:get("counters/e") })
            local ok, err = pcall(st.update, st, "counters/e", function() error({ why = "fn" }) end)
            assert.is_false(ok)
            assert.same({ why = "fn" }, err)
            assert.same({ "v", index }, { st:get("counters/e") })
            assert.is_true((st:delete("counters/e", index)))
        end)

        it("raises on misuse and changes nothing", function()
            local misuse = {
                { "put", 42, "v", 0 }, { "put", "", "v", 0 }, { "put", "   ", "v", 0 },
                { "put", ("k"):rep(513), "v", 0 }, { "put", ("é"):rep(257), "v", 0 },
                { "put", "rvn-atomic/users/1", "v", 0 }, { "put", "RVN-ATOMIC/x", "v", 0 },
                { "put", "rvn-atomic/", "v", 0 }, { "put", "Rvn-Atomic/", "v", 0 },
                { "put", "bad\255", "v", 0 }, { "put", "overlong\224\128\175", "v", 0 },
                { "put", "overlong\240\128\128\175", "v", 0 }, { "put", "surrogate\237\191\191", "v", 0 },
                { "put", "k", nil, 0 }, { "put", "k", print, 0 }, { "put", "k", io.stdout, 0 },
                { "put", "k", { 1, nil, 3 }, 0 }, { "put", "k", { [1] = 1, [3] = 3 }, 0 },
                { "put", "k", 0 / 0, 0 }, { "put", "k", math.huge, 0 },
                { "put", "k", "v", -1 }, { "put", "k", "v", 1.5 }, { "put", "k", "v", 0 / 0 },
                { "put", "k", "v", "0" }, { "put", "k", "v", nil },
                { "put", "k", "v", 0, { expires = "soon" } }, { "put", "k", "v", 0, "opts" },
                { "put", "k", "v", 0, { expires = 253402300800 } },     -- year 10000: C# cannot
                { "put", "k", "v", 0, { expires = -1 } }, { "put", "k", "v", 0, { expires = 0 / 0 } },
                { "put", "k", "v", 0, { expire = 2e9 } },     -- misspelt: must not be ignored
                { "get", nil }, { "get", "" }, { "get", {} },
                { "delete", "k", -3 }, { "delete", "k", nil }, { "delete", 7, 1 },
                { "get_many", "k" }, { "get_many", { "a", "" } }, { "get_many", { "a", 1 } },
                { "list", 42 }, { "list", "p", { start = -1 } }, { "list", "p", { page_size = 0 } },
                { "list", "p", "all" }, { "list", "\255" }, { "list", "p", { pagesize = 1 } },
                { "update", "", print }, { "update", "k", nil }, { "update", "k", "fn" },
                { "update", "k", print, { retries = -1 } }, { "update", "k", print, { bogus = 1 } },
                { "update", "k", print, { expires = "soon" } },
                { "update", "k", function() return print end },
            }
            for _, m in ipairs(misuse) do
                local method = m[1]
                local ok, err = pcall(st[method], st, (table.unpack or unpack)(m, 2, 6))
                assert.is_false(ok, method .. " did not raise")
                assert.matches("^bad argument #%d to '" .. method .. "'", err)
            end
            local cyclic = {}
            cyclic.self = cyclic
            assert.has_error(function() st:put("k", cyclic, 0) end)
            assert.has_error(function() st.put({}, "k", "v", 0) end,
                "bad argument #1 to 'put' (cmpxchg.Store expected, got table)")
            assert.same({ nil, 0 }, { st:get("k") })
            assert.equal(0, #st:list(""))
        end)

        it("raises on use after close; close is idempotent", function()
            local other = assert(ctx.open())
            assert.equal("store", cmpxchg.type(other))
            assert.is_true(other:close())
            assert.is_true(other:close())
            assert.equal("closed store", cmpxchg.type(other))
            assert.equal("cmpxchg.Store (closed)", tostring(other))
            for _, call in ipairs({
                function() other:put("k", 1, 0) end, function() other:get("k") end,
                function() other:get_many({ "k" }) end, function() other:list("") end,
                function() other:delete("k", 1) end, function() other:lock("k") end,
                function() other:update("k", function() return 1 end) end,
                function() other:with_lock("k", nil, print) end,
            }) do
                assert.has_error(call, "attempt to use a closed store")
            end
        end)
    end)
end
