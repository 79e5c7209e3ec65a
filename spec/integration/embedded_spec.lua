-- The embedded store: the shared contracts, then what only a local file has
-- (several processes on one file, durability, sweeps, file errors).
local backends = require "spec.support.backends"
local cmpxchg = require "cmpxchg"
local helpers = require "spec.helpers"

local ctx = backends.embedded()

local t = { describe = describe, it = it, before_each = before_each,
            after_each = after_each, assert = assert }
require("spec.support.store_contract")(t, ctx)
require("spec.support.transaction_contract")(t, ctx)
require("spec.support.lock_contract")(t, ctx)
require("spec.support.recipes_contract")(t, ctx)

describe("embedded store", function()
    local path

    before_each(function() path = helpers.tmpdb() end)
    after_each(helpers.cleanup)

    it("shares one file and one index between handles", function()
        local a = assert(cmpxchg.open(path))
        local b = assert(cmpxchg.open(path))
        local _, i1 = a:put("k", "from a", 0)
        assert.same({ "from a", i1 }, { b:get("K") })
        assert.same({ false, i1, "from a" }, { b:put("k", "from b", 0) })
        local _, i2 = b:put("other", 1, 0)
        assert.is_true(i2 > i1)
        a:close()
        b:close()
    end)

    it("keeps namespaces (the database option) apart under one global index", function()
        local a = assert(cmpxchg.open(path, { database = "shop" }))
        local b = assert(cmpxchg.open(path, { database = "crm" }))
        local _, ia = a:put("k", "shop's", 0)
        local ok, ib = b:put("k", "crm's", 0)
        assert.is_true(ok)
        assert.is_true(ib > ia)
        assert.equal("shop's", (a:get("k")))
        assert.equal("crm's", (b:get("k")))
        assert.equal(1, #a:list(""))
        a:close()
        b:close()
    end)

    it("never lets namespaces share keys, whatever their names", function()
        local file = helpers.tmpdb()
        require("spec.support.database_isolation")(assert, function(name)
            return cmpxchg.open(file, { database = name })
        end, { "shop", "shop/eu", "shop/", "shopx", "" })
    end)

    it("several processes doing compare-exchange on one counter lose no update", function()
        local st = assert(cmpxchg.open(path))
        assert.is_true((st:put("counter", 0, 0)))
        local procs, rounds = 4, 40
        local children = {}
        for i = 1, procs do
            children[i] = helpers.start("spec/support/increment.lua",
                { path, "counter", tostring(rounds) })
        end
        local indexes = {}
        for i = 1, procs do
            local out = children[i]:read("*a")
            assert.is_true(helpers.pclose(children[i]), out)
            for idx in out:gmatch("%d+") do
                assert.is_nil(indexes[idx], "index handed out twice: " .. idx)
                indexes[idx] = true
            end
        end
        assert.equal(procs * rounds, (st:get("counter")))
        st:close()
    end)

    it("a put that returned true survives the process being killed right after", function()
        local out = helpers.run("spec/support/put_and_die.lua", { path, "durable", "yes" })
        local index = out:match("^true (%d+)")
        assert.truthy(index, out)
        local st = assert(cmpxchg.open(path))
        assert.same({ "yes", tonumber(index) }, { st:get("durable") })
        st:close()
    end)

    it("sweeps expired items like RavenDB, and they block until swept", function()
        local st = assert(cmpxchg.open(path, { sweep_interval = 3600 }))
        local past = os.time() - 10
        local _, idx = st:put("old", "v", 0, { expires = past })
        assert.is_true((st:put("fresh", "v", 0, { expires = os.time() + 3600 })))
        -- expired but not yet swept: still there, still blocks index 0
        assert.same({ "v", idx }, { st:get("old") })
        assert.is_false((st:put("old", "w", 0)))
        assert.equal(1, st.backend:sweep())
        assert.same({ nil, 0 }, { st:get("old") })
        assert.is_true((st:put("old", "w", 0)))
        assert.equal("v", (st:get("fresh")))
        st:close()
    end)

    it("runs the sweep from writes once its period has passed", function()
        local st = assert(cmpxchg.open(path, { sweep_interval = 0 }))
        local _, idx = st:put("old", "v", 0, { expires = os.time() - 1 })
        local _, next_idx = st:put("unrelated", 1, 0)   -- this write sweeps first
        assert.same({ nil, 0 }, { st:get("old") })
        assert.is_true(next_idx > idx + 1)               -- the sweep took an index
        st:close()
    end)

    it("reports a database locked by another writer as a timeout", function()
        local st = assert(cmpxchg.open(path, { timeout = 0.2 }))
        local ready = path .. ".ready"
        local holder = io.popen(("env -u LD_PRELOAD sqlite3 %s 'BEGIN IMMEDIATE;' "
            .. "'UPDATE cmpxchg_meta SET value = value;' "
            .. "'.shell touch %s; sleep 2' 'COMMIT;' 2>&1")
            :format(helpers.shell_quote(path), helpers.shell_quote(ready)))
        helpers.wait_until(function() return helpers.file_exists(ready) end, 10, "sqlite3")
        local ok, err, code = st:put("k", "v", 0)
        assert.is_nil(ok)
        assert.equal("timeout", code)
        assert.matches("^timeout: .* is locked by another writer", err)
        local l, lerr, lcode = st:lock("k", { timeout = 0 })
        assert.is_nil(l)
        assert.equal("timeout", lcode)
        assert.matches("locked", lerr)
        holder:close()
        os.remove(ready)
        assert.is_true((st:put("k", "v", 0)))           -- and works once free
        st:close()
    end)

    it("fails to open clearly: missing directory, unwritable place, not a database", function()
        local s, err, code = cmpxchg.open("/nonexistent-dir/sub/store.db")
        assert.is_nil(s)
        assert.equal("connect", code)
        assert.matches("^connect: cannot open /nonexistent%-dir/sub/store.db: ", err)
        -- /proc takes no new files, even from root
        s, err, code = cmpxchg.open("/proc/cmpxchg-test.db")
        assert.is_nil(s)
        assert.equal("connect", code)
        assert.matches("^connect: cannot open /proc/cmpxchg%-test%.db", err)
        local f = assert(io.open(path, "w"))
        f:write(("this is not a database\n"):rep(100))
        f:close()
        s, err, code = cmpxchg.open(path)
        assert.is_nil(s)
        assert.equal("connect", code)
        assert.matches("file is not a database", err)
    end)

    it("checks its options", function()
        for _, opts in ipairs({ { sync = "often" }, { timeout = -1 }, { database = 7 },
                                { sweep_interval = 0 / 0 }, { colour = "blue" }, "opts" }) do
            assert.has_error(function() cmpxchg.open(path, opts) end)
        end
        assert.has_error(function() cmpxchg.open("") end,
            "bad argument #1 to 'open' (empty target)")
        assert.has_error(function() cmpxchg.open(42) end)
        assert.has_error(function() cmpxchg.open("ftp://x") end)
    end)

    it("sends etcd targets to the etcd backend", function()
        local s, err, code = cmpxchg.open("etcd://127.0.0.1:1", { timeout = 2 })
        assert.is_nil(s)
        assert.equal("connect", code)
        assert.matches("^connect: POST http://127.0.0.1:1/v3/kv/range", err)
        assert.has_error(function() cmpxchg.open({ "etcd://a:1", "http://b:2" }) end)
        assert.has_error(function() cmpxchg.open("etcd://a:1", { user = "u" }) end)
    end)

    it("sends http(s) targets to the RavenDB backend, which needs a database", function()
        assert.has_error(function() cmpxchg.open("http://127.0.0.1:1") end,
            "bad argument #2 to 'open' (option 'database' (the RavenDB database name) is required)")
        assert.has_error(function() cmpxchg.open({ "http://a:1", "https://b:2" }, { database = "d" }) end)
        assert.has_error(function() cmpxchg.open({}, { database = "d" }) end)
        assert.has_error(function() cmpxchg.open("http://a:1", { database = "a/b" }) end)
        assert.has_error(function() cmpxchg.open("http://a:1", { database = "d", tls = { pin = 1 } }) end)
        local s, err, code = cmpxchg.open("http://127.0.0.1:1", { database = "db", timeout = 2 })
        assert.is_nil(s)
        assert.equal("connect", code)
        assert.matches("^connect: GET http://127.0.0.1:1/topology%?name=db", err)
    end)

    it("uses $CMPXCHG_URL, else the default file", function()
        local out = helpers.run("spec/support/open_default.lua")
        assert.matches("^default ok\n", out)
        local cmd = ("CMPXCHG_URL=%s %s"):format(helpers.shell_quote(path),
            helpers.lua_command("spec/support/open_default.lua"))
        local p = io.popen(cmd .. " 2>&1")
        local out2 = p:read("*a")
        p:close()
        assert.equal("cmpxchg.Store (embedded " .. path .. ")\n", out2:match("\n(.*)$"))
    end)

    it("works on a private :memory: store, and refuses to auto-renew there", function()
        local st = assert(cmpxchg.open(":memory:"))
        assert.is_true((st:put("k", 1, 0)))
        local l = assert(st:lock("lock"))
        assert.is_true(l:release())
        -- a renewal thread's own connection would see another, empty store
        assert.has_error(function() st:lock("lock", { auto_renew = true }) end,
            "bad argument #2 to 'lock' (auto_renew is not available: its data cannot be "
            .. "reached from another connection (embedded :memory:))")
        assert.same({ nil, 0 }, { st:get("lock") })
        st:close()
    end)

    it("an unreferenced store is collected and its file stays usable", function()
        local weak = setmetatable({}, { __mode = "v" })
        weak[1] = assert(cmpxchg.open(path))
        weak[1]:put("k", 1, 0)
        collectgarbage()
        collectgarbage()
        assert.is_nil(weak[1])
        local st = assert(cmpxchg.open(path))
        assert.equal(1, (st:get("k")))
        st:close()
    end)

    it("decodes a corrupted value as a decode error, not a crash", function()
        local st = assert(cmpxchg.open(path))
        assert.is_true((st:put("k", "fine", 0)))
        local p = io.popen(("env -u LD_PRELOAD sqlite3 %s \"UPDATE cmpxchg_items SET value = '{broken'\"")
            :format(helpers.shell_quote(path)))
        p:close()
        local v, err, code = st:get("k")
        assert.is_nil(v)
        assert.equal("decode", code)
        assert.matches("^decode: stored value of 'k' is not JSON", err)
        st:close()
    end)
end)
