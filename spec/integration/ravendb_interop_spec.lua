-- Our Lua client and the official npm `ravendb` client on the same server and
-- keys: each reads what the other wrote, with the same values and indexes,
-- and compare-and-set works across them in both directions.
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"
local harness = require "spec.support.ravendb_harness"
local helpers = require "spec.helpers"

local server = harness.server()

--- Runs steps with the official client; returns its results, in order.
local function official(db, steps)
    local file = os.tmpname()
    local f = assert(io.open(file, "w"))
    f:write(json.encode(steps))
    f:close()
    local cmd = ("node spec/support/ravendb/referee.js --urls %s --database %s < %s")
        :format(helpers.shell_quote(table.concat(server.urls, ",")), db, helpers.shell_quote(file))
    local out = harness.sh(cmd)
    os.remove(file)
    local reply = assert(json.decode(out), "referee said: " .. out)
    local results = {}
    for i, r in ipairs(reply.results) do
        assert(r.ok, ("official client step %d failed: %s"):format(i, json.encode(r.error)))
        results[i] = r.result
    end
    return results
end

describe("ravendb interop with the official client", function()
    local st, db

    before_each(function()
        db = harness.create_database(server)
        st = assert(cmpxchg.open(server.urls, { database = db }))
    end)

    after_each(function()
        st:close()
        harness.delete_database(server, db)
    end)

    it("reads what we wrote, with our index", function()
        local _, index = st:put("Users/Ada", { Name = "Ada", Langs = { "lua", "c" } }, 0)
        local _, sindex = st:put("flags/x", "on", 0)
        local r = official(db, { { op = "get", key = "users/ada" }, { op = "get", key = "flags/x" } })
        assert.equal(index, r[1].index)
        assert.same({ Name = "Ada", Langs = { "lua", "c" } }, r[1].value)
        assert.same({ sindex, "on" }, { r[2].index, r[2].value })
    end)

    it("we read what it wrote, with its index", function()
        local r = official(db, {
            { op = "put", key = "orders/1", value = { Total = 12.5, Lines = 3 }, index = 0 },
            { op = "put", key = "seq", value = 7, index = 0 },
        })
        local value, index = st:get("orders/1")
        assert.same({ Total = 12.5, Lines = 3 }, value)
        assert.equal(r[1].index, index)
        assert.same({ 7, r[2].index }, { st:get("seq") })
    end)

    it("compare-and-set works across the two clients, both ways", function()
        local _, index = st:put("counter", 1, 0)
        local r = official(db, {
            { op = "put", key = "counter", value = 2, index = index },    -- right index
            { op = "put", key = "counter", value = 99, index = index },   -- stale now
        })
        assert.is_true(r[1].successful)
        assert.is_false(r[2].successful)
        assert.equal(r[1].index, r[2].index)
        local value, current = st:get("counter")
        assert.same({ 2, r[1].index }, { value, current })
        assert.same({ false, current, 2 }, { st:put("counter", 3, index) })
        assert.is_true((st:put("counter", 3, current)))
    end)

    it("it sees our @expires metadata in C#'s date format", function()
        st:put("session/1", "s", 0, { expires = 1893456000.5 })       -- 2030-01-01
        local r = official(db, { { op = "get", key = "session/1" } })
        assert.equal("2030-01-01T00:00:00.5000000Z", r[1].metadata["@expires"])
    end)

    it("our lock value is the C# DistributedLockObject it can read", function()
        local l = assert(st:lock("locks/printer", { ttl = 60 }))
        local r = official(db, { { op = "get", key = "locks/printer" } })
        assert.equal(l:token(), r[1].index)
        assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%d%d%d%dZ$", r[1].value.ExpiresAt)
        assert.is_true(math.abs(core.parse_time(r[1].value.ExpiresAt) - l:valid_until()) < 0.01)
        assert.equal(l.owner, r[1].value.Owner)
        -- the official client releases it by our token; our release then says lost
        local d = official(db, { { op = "delete", key = "locks/printer", index = l:token() } })
        assert.is_true(d[1].successful)
        assert.same({ false, "lost" }, { l:release() })
    end)

    it("deletes by index agree, and listings list the same items and indexes", function()
        local indexes = {}
        for i = 1, 5 do
            local _, idx = st:put(("list/%d"):format(i), i, 0)
            indexes[i] = idx
        end
        local r = official(db, {
            { op = "delete", key = "list/2", index = indexes[2] },
            { op = "delete", key = "list/3", index = indexes[3] + 1000 },
            { op = "get_prefix", startsWith = "list/" },
        })
        assert.is_true(r[1].successful)
        assert.is_false(r[2].successful)
        local theirs = {}
        for _, pair in ipairs(r[3]) do theirs[pair[2].key:lower()] = pair[2].index end
        local ours = {}
        for _, item in ipairs(st:list("list/")) do ours[item.key:lower()] = item.index end
        assert.same(theirs, ours)
        assert.is_nil(ours["list/2"])
        assert.same({ false, 0 }, { st:delete("list/2", indexes[2]) })
    end)
end)
