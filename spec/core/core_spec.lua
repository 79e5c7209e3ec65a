-- The C core's contract: clocks, dates, ids, key folding, and the embedded
-- handle's argument errors, closed state, tostring and finalization.
local core = require "cmpxchg.core"
local helpers = require "spec.helpers"

describe("cmpxchg.core", function()
    it("exports luaopen_cmpxchg_core and nothing else (internal helpers are hidden)", function()
        local so = helpers.cpath:match("[^;]+"):gsub("%?", "cmpxchg/core")
        local p = assert(io.popen("nm -D --defined-only " .. helpers.shell_quote(so) .. " 2>&1"))
        local exported = {}
        for line in p:lines() do
            local name = line:match("^%x+ [TDBRVW] (%S+)$")
            if name and not name:find("^_") then exported[#exported + 1] = name end
        end
        p:close()
        assert.same({ "luaopen_cmpxchg_core" }, exported)
    end)

    describe("clocks and sleep", function()
        it("monotime never goes back and sleep waits at least as asked", function()
            local t0 = core.monotime()
            core.sleep(0.02)
            local t1 = core.monotime()
            assert.is_true(t1 - t0 >= 0.02)
        end)

        it("time is the wall clock with sub-second precision", function()
            assert.is_true(math.abs(core.time() - os.time()) < 2)
            if math.type then assert.equal("float", math.type(core.time())) end
            local fractional = false                -- some reading is not whole seconds
            for _ = 1, 100 do
                local t = core.time()
                if t ~= math.floor(t) then fractional = true break end
                core.sleep(0.001)
            end
            assert.is_true(fractional)
        end)

        it("sleep refuses negative, NaN and absurd durations", function()
            assert.has_error(function() core.sleep(-1) end)
            assert.has_error(function() core.sleep(0 / 0) end)
            assert.has_error(function() core.sleep(1e12) end)
            assert.has_error(function() core.sleep("x") end)
        end)
    end)

    describe("format_time", function()
        it("writes C#'s UTC format: 7 fractional digits and Z", function()
            assert.equal("1970-01-01T00:00:00.0000000Z", core.format_time(0))
            assert.equal("2024-01-02T03:04:05.5000000Z", core.format_time(1704164645.5))
            assert.equal("2024-02-29T23:59:59.0000000Z", core.format_time(1709251199))
        end)

        it("rounds to 100 ns and carries into the next second", function()
            assert.equal("2024-01-02T03:04:06.0000000Z", core.format_time(1704164645.99999999))
            -- that one is 1704164646.0 already as a double: a carry needs a time
            -- small enough to hold 0.99999999 (the carry runs through the date)
            assert.equal("1970-01-01T00:00:02.0000000Z", core.format_time(1.99999999))
            assert.equal("1970-01-02T00:00:00.0000000Z", core.format_time(86399.99999999))
            assert.matches("%.12345%d%dZ$", core.format_time(1704164645.12345))
        end)

        it("refuses times outside 0001..9999", function()
            assert.has_error(function() core.format_time(-1) end)
            assert.has_error(function() core.format_time(253402300800) end)
            assert.has_error(function() core.format_time(0 / 0) end)
        end)
    end)

    describe("parse_time", function()
        it("reads what C#, Node and Python write", function()
            assert.equal(1704164645.5, core.parse_time("2024-01-02T03:04:05.5000000Z"))
            assert.equal(1704164645.123, core.parse_time("2024-01-02T03:04:05.1230000Z"))
            assert.equal(1704164645, core.parse_time("2024-01-02T03:04:05Z"))
            assert.equal(1704164645.25, core.parse_time("2024-01-02T03:04:05.250000"))
            assert.equal(1704164645, core.parse_time("2024-01-02T05:04:05+02:00"))
            assert.equal(1704164645, core.parse_time("2024-01-02T01:04:05-02:00"))
        end)

        it("round-trips format_time", function()
            for _, t in ipairs({ 0, 1, 1704164645.1234567, 1800000000.5 }) do
                assert.is_true(math.abs(core.parse_time(core.format_time(t)) - t) < 1e-6)
            end
        end)

        it("answers nil for anything that is not a date-time", function()
            for _, s in ipairs({ "", "2024", "2024-01-02", "2024-13-02T00:00:00Z",
                "2024-01-02T25:00:00Z", "2024-01-02T03:04:05.Z", "2024-01-02T03:04:05Zjunk",
                "2024-01-02T03:04:05+2", "yesterday", "2024-01-02T03:04:05.12x" }) do
                assert.is_nil(core.parse_time(s), s)
            end
        end)
    end)

    describe("uuid", function()
        it("gives distinct version-4 UUIDs", function()
            -- checked in plain Lua and asserted once: 3000 asserts took 50 s
            -- under the ASan pass's collector
            local seen, bad = {}, {}
            for _ = 1, 1000 do
                local u = core.uuid()
                if #u ~= 36 or seen[u]
                        or not u:match("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x+$") then
                    bad[#bad + 1] = u
                end
                seen[u] = true
            end
            assert.same({}, bad)
        end)
    end)

    describe("fold_key", function()
        it("folds case as RavenDB compares keys", function()
            assert.equal("users/ab-1", core.fold_key("Users/AB-1"))
            assert.equal("émile/ñandú", core.fold_key("ÉMILE/ÑANDÚ"))
            assert.equal("σοφία", core.fold_key("ΣΟΦΊΑ"))
            assert.equal("москва", core.fold_key("МОСКВА"))
            assert.equal("ёлка", core.fold_key("Ёлка"))
            assert.equal("łódź", core.fold_key("ŁÓDŹ"))
            assert.equal("日本/鍵", core.fold_key("日本/鍵"))
            assert.equal("😀", core.fold_key("😀"))
        end)

        it("folds every ASCII character exactly as string.lower does", function()
            for b = 1, 127 do
                local c = string.char(b)
                assert.equal(c:lower(), core.fold_key(c), ("byte %d"):format(b))
            end
            -- NUL is no key's byte: refused, never folded
            assert.same({ nil, "a string with a NUL byte" }, { core.fold_key("\0") })
        end)

        it("folds the edges of every folded range, and nothing around them", function()
            local function u(cp)            -- UTF-8 of a code point below U+0800
                if cp < 0x80 then return string.char(cp) end
                return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64)
            end
            local folds = {                 -- code point, its lower case (itself: kept)
                { 0xBF, 0xBF }, { 0xC0, 0xE0 }, { 0xD6, 0xF6 }, { 0xD7, 0xD7 }, { 0xD8, 0xF8 },
                { 0xDE, 0xFE }, { 0xDF, 0xDF }, { 0xFF, 0xFF },
                { 0x100, 0x101 }, { 0x101, 0x101 }, { 0x12E, 0x12F }, { 0x130, 0x130 },
                { 0x131, 0x131 }, { 0x136, 0x137 }, { 0x138, 0x138 }, { 0x139, 0x13A },
                { 0x13A, 0x13A }, { 0x147, 0x148 }, { 0x149, 0x149 }, { 0x14A, 0x14B },
                { 0x176, 0x177 }, { 0x178, 0xFF }, { 0x179, 0x17A }, { 0x17D, 0x17E },
                { 0x17F, 0x17F },
                { 0x385, 0x385 }, { 0x386, 0x3AC }, { 0x387, 0x387 }, { 0x388, 0x3AD },
                { 0x38A, 0x3AF }, { 0x38B, 0x38B }, { 0x38C, 0x3CC }, { 0x38E, 0x3CD },
                { 0x38F, 0x3CE }, { 0x390, 0x390 }, { 0x391, 0x3B1 }, { 0x3A1, 0x3C1 },
                { 0x3A2, 0x3A2 }, { 0x3A3, 0x3C3 }, { 0x3AB, 0x3CB }, { 0x3AC, 0x3AC },
                { 0x3FF, 0x3FF }, { 0x400, 0x450 }, { 0x40F, 0x45F }, { 0x410, 0x430 },
                { 0x42F, 0x44F }, { 0x430, 0x430 }, { 0x460, 0x461 }, { 0x481, 0x481 },
                { 0x482, 0x482 }, { 0x488, 0x488 }, { 0x48A, 0x48B }, { 0x4BF, 0x4BF },
                { 0x4C0, 0x4CF }, { 0x4C1, 0x4C2 }, { 0x4CD, 0x4CE }, { 0x4CE, 0x4CE },
                { 0x4CF, 0x4CF }, { 0x4D0, 0x4D1 }, { 0x4FE, 0x4FF }, { 0x4FF, 0x4FF },
                { 0x500, 0x500 },
            }
            for _, f in ipairs(folds) do
                assert.equal(u(f[2]), core.fold_key(u(f[1])), ("U+%04X"):format(f[1]))
            end
        end)

        it("never changes the byte length", function()
            local s = "AÀĀΑА" .. ("Z"):rep(100)
            assert.equal(#s, #core.fold_key(s))
        end)

        it("refuses invalid UTF-8 and keys over 512 bytes", function()
            local invalid = { "\255", "a\195", "\192\175", "\237\160\128", "\244\144\128\128",
                "\224\128\175", "\240\128\128\175",     -- overlong 3- and 4-byte forms of "/"
                "\224\159\191", "\240\143\191\191",     -- of U+07FF and U+FFFF, the longest ones
                "\237\191\191" }                          -- U+DFFF, the last surrogate
            for _, bad in ipairs(invalid) do
                local folded, why = core.fold_key(bad)
                assert.is_nil(folded)
                assert.equal("not valid UTF-8", why)
            end
            assert.is_nil(core.fold_key(("a"):rep(513)))
            assert.equal(512, #core.fold_key(("A"):rep(512)))
            -- the largest of each length is valid
            for _, ok in ipairs({ "\127", "\223\191", "\239\191\191", "\244\143\191\191" }) do
                assert.equal(ok, core.fold_key(ok))
            end
        end)
    end)

    describe("key_problem and url_escape", function()
        it("says why a key cannot be one, in one pass", function()
            assert.is_nil(core.key_problem("printers/First-Floor"))
            assert.is_nil(core.key_problem(("é"):rep(256)))
            assert.equal("key must not be empty or blank", core.key_problem(""))
            assert.equal("key must not be empty or blank", core.key_problem(" \t\r\n\v\f"))
            assert.equal("key is 513 bytes, the limit is 512", core.key_problem(("x"):rep(513)))
            assert.equal("key is not valid UTF-8", core.key_problem("a\255b"))
            assert.matches("reserved", core.key_problem("RVN-ATOMIC/users/1"))
            assert.is_nil(core.key_problem("rvn-atomic"))
            assert.matches("reserved", core.key_problem("rvn-atomic/"))
            assert.matches("reserved", core.key_problem("Rvn-Atomic/"))
        end)

        it("percent-encodes all but RFC 3986's unreserved bytes", function()
            local plain = "Az09-._~"
            assert.equal(plain, core.url_escape(plain))
            assert.equal("a%20b%2Fc%2Bd%25%C3%A9%00", core.url_escape("a b/c+d%\195\169\0"))
        end)
    end)

    describe("json_fields", function()
        local put_reply = '{"Index":90482,"Value":{"Object":{"n":42}},"Successful":true}'

        it("picks values by path without decoding the rest", function()
            assert.same({ true, 90482, true, '{"Object":{"n":42}}', nil },
                { core.json_fields(put_reply, "Index", "Successful", "Value", "Missing") })
            local etcd = '{"header":{"revision":"12242"},"responses":[{"r":{"kvs":[{"v":"x"}]}}]}'
            assert.same({ true, "12242", "x" },
                { core.json_fields(etcd, "header.revision", "responses.0.r.kvs.0.v") })
            assert.same({ true, nil, nil },
                { core.json_fields(etcd, "responses.1", "header.revision.x") })
        end)

        it("converts scalars (integers stay integers), objects and arrays stay text", function()
            local math_type = require("cmpxchg.check").math_type     -- also on 5.1/5.2
            local ok, i, f, e, big, neg, null, fals, arr = core.json_fields(
                ' { "i" : 12 , "f" : 1.5, "e": 1e3, "big": 123456789012345678901234,'
                .. ' "neg": -7, "n": null, "b": false, "a": [1, {"x": []}] } ',
                "i", "f", "e", "big", "neg", "n", "b", "a")
            assert.is_true(ok)
            assert.equal(12, i)
            assert.equal("integer", math_type(i))
            assert.equal(1.5, f)
            assert.equal(1000.0, e)
            assert.equal("float", math_type(big))
            assert.equal(-7, neg)
            assert.is_nil(null)
            assert.is_false(fals)
            assert.equal('[1, {"x": []}]', arr)
        end)

        it("unescapes strings, surrogate pairs included", function()
            local _, s = core.json_fields([[{"s":"a\"b\\c\/d\n\u00e9\u20ac\ud83d\ude00"}]], "s")
            assert.equal('a"b\\c/d\n\195\169\226\130\172\240\159\152\128', s)
        end)

        it("json_texts gives every value as its JSON text", function()
            assert.same({ true, "90482", '{"Object":{"n":42}}', "true", nil },
                { core.json_texts(put_reply, "Index", "Value", "Successful", "Missing") })
            assert.same({ true, '"a\\"b"', "null" },
                { core.json_texts('{"s":"a\\"b","n":null}', "s", "n") })
            assert.same({ false, "not valid JSON" }, { core.json_texts("{", "s") })
        end)

        it("matches a member by its whole name only: never a prefix, a suffix or a nested one", function()
            assert.same({ true, nil, nil }, { core.json_fields(
                '{"IndexX":1,"XIndex":2,"Inde":3,"a":{"Index":4},"Successfully":true}',
                "Index", "Successful") })
            assert.same({ true, 5 }, { core.json_fields('{"IndexX":1,"Index":5,"XIndex":2}', "Index") })
            -- names are compared as written: an escaped spelling is another name
            assert.same({ true, nil }, { core.json_fields('{"In\\u0064ex":6}', "Index") })
        end)

        it("reads numbers with an exponent as floats, whatever the case of E", function()
            local ok, a, b, c = core.json_fields('{"a":1E3,"b":25e-1,"c":-2E+2}', "a", "b", "c")
            assert.is_true(ok)
            assert.same({ 1000, 2.5, -200 }, { a, b, c })
            if math.type then assert.equal("float", math.type(a)) end     -- 5.3+
        end)

        it("keeps the last of repeated members, as lua-cjson does", function()
            assert.same({ true, 2 }, { core.json_fields('{"a":1,"a":2}', "a") })
        end)

        it("refuses anything that is not valid JSON, however small the fault", function()
            for _, bad in ipairs({ "", "{", '{"Index":5,"Successful":true', '{"a":1,}',
                    '{"a" 1}', "[1 2]", '{"a":tru}', '{"a":01}', '{"a":1.}', '{"a":-}',
                    '{"a":"\\x"}', '{"a":"\\u12"}', '{"a":"tab\there"}', '{"a":1} x',
                    "<html>502 Bad Gateway</html>", ("["):rep(1001) .. ("]"):rep(1001) }) do
                local ok, why = core.json_fields(bad, "a")
                assert.is_false(ok, bad)
                assert.equal("not valid JSON", why)
            end
            assert.is_true((core.json_fields(("["):rep(1000) .. ("]"):rep(1000))))
        end)
    end)

    describe("embedded handle", function()
        local path

        before_each(function() path = helpers.tmpdb() end)
        after_each(helpers.cleanup)

        it("checks its arguments", function()
            local h = assert(core.embedded_open(path))
            assert.has_error(function() h:put({}, "1", 0) end)
            assert.has_error(function() h:put("", "1", 0) end)
            assert.has_error(function() h:put(("k"):rep(513), "1", 0) end)
            assert.has_error(function() h:put("\255", "1", 0) end)
            assert.has_error(function() h:put("k", nil, 0) end)
            assert.has_error(function() h:put("k", "1", -1) end)
            assert.has_error(function() h:put("k", "1", 1.5) end)
            assert.has_error(function() h:put("k", "1", 0, "tomorrow") end)
            assert.has_error(function() h:get_many({ "a", 7 }) end)
            assert.has_error(function() h:list("a", -1) end)
            assert.has_error(function() h.put({}, "k", "1", 0) end, nil)
            assert.has_error(function() core.embedded_open(path, { sync = "sometimes" }) end)
            assert.has_error(function() core.embedded_open(path, { busy_timeout = -5 }) end)
            assert.has_error(function() core.embedded_open(path, { sweep_interval = 0 / 0 }) end)
            assert.has_error(function() core.embedded_open(path, "opts") end)
            assert.equal(0, h:last_index())
            h:close()
        end)

        it("raises on use after close; close is idempotent and returns true", function()
            local h = assert(core.embedded_open(path))
            assert.is_true(h:close())
            assert.is_true(h:close())
            for _, call in ipairs({
                function() h:put("k", "1", 0) end, function() h:get("k") end,
                function() h:delete("k", 1) end, function() h:list("") end,
                function() h:get_many({ "k" }) end, function() h:sweep() end,
            }) do
                assert.has_error(call, "attempt to use a closed store")
            end
        end)

        it("has a tostring for open and closed handles", function()
            local h = assert(core.embedded_open(path))
            assert.matches("^cmpxchg%.Embedded %(.*%.db%) 0x%x+$", tostring(h))
            h:close()
            assert.equal("cmpxchg.Embedded (closed)", tostring(h))
        end)

        it("is finalized by the collector", function()
            local weak = setmetatable({}, { __mode = "v" })
            weak[1] = assert(core.embedded_open(path))
            collectgarbage()
            collectgarbage()
            assert.is_nil(weak[1])
        end)

        it("refuses a SQLite file that belongs to another application", function()
            local p = io.popen(("env -u LD_PRELOAD sqlite3 %s 'CREATE TABLE invoices (id INTEGER)'")
                :format(helpers.shell_quote(path)))
            p:close()
            local h, err, code = core.embedded_open(path)
            assert.is_nil(h)
            assert.equal("connect", code)
            assert.matches("is a SQLite database of another application", err)
        end)
    end)
end)
