--- The transaction contract every backend must keep (store:transaction,
-- store:update_many, and RavenDB's documents where the backend has them):
-- run by spec/integration/*_spec.lua against each backend, as the store
-- contract is.
--   require("spec.support.transaction_contract")(t, ctx)
-- t: busted's describe/it/before_each/after_each/assert
-- ctx.open(): a fresh, empty store; ctx.name: the backend's name.

local unpack = table.unpack or unpack     -- luacheck: ignore 143

return function(t, ctx)
    local describe, it, before_each, after_each, assert =
        t.describe, t.it, t.before_each, t.after_each, t.assert

    describe("transaction contract (" .. ctx.name .. ")", function()
        local st

        before_each(function() st = assert(ctx.open()) end)
        after_each(function() st:close() end)

        --- Deletes the keys left, each at its index: every test leaves no key behind.
        local function clean()
            for _, item in ipairs(assert(st:list(""))) do
                assert.is_true((st:delete(item.key, item.index)))
            end
        end

        it("applies every write with one index, greater than any before", function()
            local _, before = st:put("t/old", "x", 0)
            local ok, index = st:transaction({
                { op = "put", key = "t/a", value = { n = 1 }, index = 0 },
                { op = "put", key = "t/b", value = "two", index = 0 },
                { op = "delete", key = "t/old", index = before },
            })
            assert.is_true(ok)
            assert.is_true(index > before)
            assert.same({ { n = 1 }, index }, { st:get("t/a") })
            assert.same({ "two", index }, { st:get("t/b") })
            assert.same({ nil, 0 }, { st:get("t/old") })
            -- compare-and-set on the transaction's index, as on a put's
            local ok2, index2 = st:transaction({
                { op = "put", key = "T/A", value = { n = 2 }, index = index },
                { op = "delete", key = "t/B", index = index },
            })
            assert.is_true(ok2)
            assert.is_true(index2 > index)
            assert.same({ { n = 2 }, index2 }, { st:get("t/a") })
            assert.same({ nil, 0 }, { st:get("t/b") })
            clean()
        end)

        it("writes nothing when one compare fails, and reports every failed key", function()
            local _, ia = st:put("c/a", "a1", 0)
            local _, ib = st:put("c/b", { v = "b1" }, 0)
            local _, ip = st:put("c/p", "p1", 0)
            local ok, conflicts = st:transaction({
                { op = "put", key = "c/a", value = "a2", index = ia },        -- holds
                { op = "put", key = "c/b", value = "b2", index = ib + 1000 }, -- stale
                { op = "put", key = "c/new", value = 1, index = 0 },          -- holds
                { op = "put", key = "c/A2", value = 1, index = 77 },          -- absent: never creates
                { op = "delete", key = "c/a3", index = 0 },                   -- absent: holds
                { op = "put", key = "C/B2", value = 1, index = 0 },           -- holds
                { op = "delete", key = "c/p", index = 0 },                    -- present: fails
            })
            assert.is_false(ok)
            assert.same({ { key = "c/b", index = ib, value = { v = "b1" } },
                          { key = "c/A2", index = 0 },
                          { key = "c/p", index = ip, value = "p1" } }, conflicts)
            assert.same({ "a1", ia }, { st:get("c/a") })
            assert.same({ { v = "b1" }, ib }, { st:get("c/b") })
            assert.same({ nil, 0 }, { st:get("c/new") })
            assert.same({ nil, 0 }, { st:get("c/b2") })
            -- a create over a present key, a delete on a stale index
            ok, conflicts = st:transaction({
                { op = "put", key = "C/A", value = "x", index = 0 },
                { op = "delete", key = "c/b", index = ia },
            })
            assert.is_false(ok)
            assert.same({ { key = "C/A", index = ia, value = "a1" },
                          { key = "c/b", index = ib, value = { v = "b1" } } }, conflicts)
            assert.equal(3, #st:list(""))
            clean()
        end)

        it("checks a key absent with a delete at index 0, which deletes nothing", function()
            local ok, index = st:transaction({
                { op = "delete", key = "g/guard", index = 0 },
                { op = "put", key = "g/x", value = 1, index = 0 },
            })
            assert.is_true(ok)
            assert.same({ 1, index }, { st:get("g/x") })
            assert.is_true((st:put("g/guard", "here", 0)))
            local _, conflicts = st:transaction({
                { op = "delete", key = "g/guard", index = 0 },
                { op = "put", key = "g/x", value = 2, index = index },
            })
            assert.equal("g/guard", conflicts[1].key)
            assert.equal("here", conflicts[1].value)
            assert.equal(1, #conflicts)
            assert.same({ 1, index }, { st:get("g/x") })
            clean()
        end)

        it("writes expires as put does", function()
            local ok, index = st:transaction({
                { op = "put", key = "e/a", value = "v", index = 0, expires = os.time() + 3600 },
                { op = "put", key = "e/b", value = "w", index = 0, expires = os.time() + 7200 },
            })
            assert.is_true(ok)
            assert.same({ "v", index }, { st:get("e/a") })
            assert.same({ "w", index }, { st:get("e/b") })
            clean()
        end)

        it("update_many reads a snapshot, computes, writes every key at once", function()
            local keys = { "m/a", "m/B" }
            local values, index = st:update_many(keys, function(v)
                assert.same({}, v)
                return { ["m/a"] = 10, ["m/B"] = 20 }
            end)
            assert.same({ ["m/a"] = 10, ["m/B"] = 20 }, values)
            assert.same({ 10, index }, { st:get("m/a") })
            -- a key fn leaves out keeps its value (written back: it takes the new index)
            local calls = {}
            local v2, index2 = st:update_many(keys, function(v)
                calls[#calls + 1] = { v["m/a"], v["m/B"] }
                if #calls == 1 then      -- a rival writes between our read and our write
                    assert.is_true((st:put("m/b", 25, index)))
                end
                return { ["m/a"] = v["m/a"] + 1 }
            end)
            assert.same({ { 10, 20 }, { 10, 25 } }, calls)
            assert.same({ ["m/a"] = 11, ["m/B"] = 25 }, v2)
            assert.same({ 25, index2 }, { st:get("m/b") })
            -- nil: nothing written
            assert.same({ { ["m/a"] = 11, ["m/B"] = 25 }, 0 },
                { st:update_many(keys, function() return nil end) })
            assert.same({ 11, index2 }, { st:get("m/a") })
            clean()
        end)

        it("update_many gives up with conflict after its retries", function()
            local _, index = st:put("u/a", 0, 0)
            local calls = 0
            local value, err, code = st:update_many({ "u/a", "u/b" }, function(v)
                calls = calls + 1
                local ok, idx = st:put("u/a", v["u/a"] + 100, index)
                assert.is_true(ok)
                index = idx
                return { ["u/b"] = calls }
            end, { retries = 1 })
            assert.is_nil(value)
            assert.equal("conflict", code)
            assert.matches("^conflict: the keys were changed by another writer at each of 2 "
                .. "attempts", err)
            assert.equal(2, calls)
            assert.same({ nil, 0 }, { st:get("u/b") })
            clean()
        end)

        it("raises on misuse and changes nothing", function()
            local big = {}
            for i = 1, 3 do big[i] = { op = "put", key = "k" .. i, value = i, index = 0 } end
            local misuse = {
                { "transaction", nil }, { "transaction", "ops" }, { "transaction", {} },
                { "transaction", { { op = "put", key = "k", value = 1, index = 0 }, nil,
                                   { op = "put", key = "j", value = 1, index = 0 } } },
                { "transaction", { [2] = { op = "put", key = "k", value = 1, index = 0 } } },
                { "transaction", { "put" } },
                { "transaction", { { op = "create", key = "k", value = 1, index = 0 } } },
                { "transaction", { { key = "k", value = 1, index = 0 } } },
                { "transaction", { { op = "put", key = "", value = 1, index = 0 } } },
                { "transaction", { { op = "put", key = "rvn-atomic/x", value = 1, index = 0 } } },
                { "transaction", { { op = "put", key = ("k"):rep(513), value = 1, index = 0 } } },
                { "transaction", { { op = "put", key = "k", value = nil, index = 0 } } },
                { "transaction", { { op = "put", key = "k", value = print, index = 0 } } },
                { "transaction", { { op = "put", key = "k", value = 1, index = -1 } } },
                { "transaction", { { op = "put", key = "k", value = 1, index = 1.5 } } },
                { "transaction", { { op = "put", key = "k", value = 1 } } },
                { "transaction", { { op = "put", key = "k", value = 1, index = 0, expires = "x" } } },
                { "transaction", { { op = "put", key = "k", value = 1, index = 0, ttl = 5 } } },
                { "transaction", { { op = "delete", key = "k", index = 0, value = 1 } } },
                { "transaction", { { op = "put", key = "k", value = 1, index = 0 },
                                   { op = "delete", key = "K", index = 3 } } },
                { "transaction", { { op = "put_document", id = "users/1/", document = {} } } },
                { "update_many", {}, print }, { "update_many", "k", print },
                { "update_many", { "a", "A" }, print }, { "update_many", { "a" }, "fn" },
                { "update_many", { "a" }, print, { retries = -1 } },
                { "update_many", { "a" }, print, { bogus = 1 } },
                { "update_many", { "a" }, function() return { b = 1 } end },
                { "update_many", { "a" }, function() return { a = print } end },
                { "update_many", { "a" }, function() return 5 end },
                { "get_document", 5 }, { "query", 5 },
            }
            for _, m in ipairs(misuse) do
                local method = m[1]
                local ok, err = pcall(st[method], st, unpack(m, 2, 4))
                assert.is_false(ok, method .. " did not raise")
                assert.matches("^bad argument #%d to '" .. method .. "'", err)
            end
            assert.has_error(function() st.transaction({}, big) end,
                "bad argument #1 to 'transaction' (cmpxchg.Store expected, got table)")
            assert.same({ nil, 0 }, { st:get("k") })
            assert.same({}, st:list(""))
        end)

        it("holds a transaction to the backend's own limits, with a clear error", function()
            local limits = st.backend.txn_limits
            if limits.ops then
                local ops = {}
                for i = 1, limits.ops + 1 do
                    ops[i] = { op = "put", key = "l/" .. i, value = i, index = 0 }
                end
                local ok, err = pcall(st.transaction, st, ops)
                assert.is_false(ok)
                assert.matches("^bad argument #1 to 'transaction' %(" .. (limits.ops + 1)
                    .. " operations: ", err)
                ops[#ops] = nil
                local done, index = st:transaction(ops)       -- the limit itself is fine
                assert.is_true(done, index)
                assert.equal(limits.ops, #st:list("l/"))
                clean()
            end
            if limits.bytes and limits.bytes <= 16 * 1024 * 1024 then
                local cost = st.backend.txn_cost and st.backend:txn_cost({ kind = "put",
                    key = "l/big", text = '""', index = 0 }) or #"l/big" + 2
                local fits = ("x"):rep(limits.bytes - cost)
                local ok, err = pcall(st.transaction, st,
                    { { op = "put", key = "l/big", value = fits .. "x", index = 0 } })
                assert.is_false(ok)
                assert.matches("^bad argument #1 to 'transaction' %(%d+ bytes: ", err)
                assert.is_true((st:transaction({ { op = "put", key = "l/big", value = fits,
                    index = 0 } })))
                assert.equal(#fits, #st:get("l/big"))
                clean()
            end
            if not limits.ops then
                -- no limit of its own on operations: a thousand writes are one index
                local ops = {}
                for i = 1, 1000 do ops[i] = { op = "put", key = "l/" .. i, value = i, index = 0 } end
                local ok, index = st:transaction(ops)
                assert.is_true(ok)
                assert.same({ 1000, index }, { st:get("l/1000") })
                clean()
            end
        end)

        it("documents and RQL: RavenDB's, guarded by atomic guards; a clear error elsewhere", function()
            if not st.backend.documents then
                local ok, err = pcall(st.transaction, st,
                    { { op = "put_document", id = "users/1", document = { Name = "Ann" } } })
                assert.is_false(ok)
                assert.matches("^bad argument #1 to 'transaction' %(operation #1: documents are "
                    .. "RavenDB's; an %a+ store has compare%-exchange items only", err)
                ok, err = pcall(st.get_document, st, "users/1")
                assert.is_false(ok)
                assert.matches("^bad argument #1 to 'get_document' %(a RavenDB store expected, "
                    .. "got %a+ ", err)
                ok, err = pcall(st.query, st, "from Users")
                assert.is_false(ok)
                assert.matches("^bad argument #1 to 'query' %(a RavenDB store expected", err)
                return
            end
            local ok, index, cvs = st:transaction({
                { op = "put", key = "emails/ann@example.org", value = "users/ann", index = 0 },
                { op = "put_document", id = "users/ann", collection = "Users",
                  document = { Name = "Ann", Email = "ann@example.org" } },
            })
            assert.is_true(ok)
            local doc, cv = st:get_document("Users/Ann")
            assert.equal("Ann", doc.Name)
            assert.equal("Users", doc["@metadata"]["@collection"])
            assert.equal(cvs["users/ann"], cv)
            assert.matches("TRXN:" .. index .. "%-", cv)
            local found = assert(st:query("from Users where id() == cmpxchg($key)",
                { key = "emails/ann@example.org" }))
            assert.equal(1, #found)
            assert.equal("users/ann", found[1]["@metadata"]["@id"])
            assert.same({}, assert(st:query("from Users where id() == cmpxchg($key)",
                { key = "emails/nobody" })))
            -- a second create of the document: its guard refuses it
            local ok2, conflicts = st:transaction({
                { op = "put", key = "emails/other@example.org", value = "users/ann", index = 0 },
                { op = "put_document", id = "USERS/ANN", document = { Name = "Impostor" },
                  collection = "Users" },
            })
            assert.is_false(ok2)
            assert.same({ { id = "USERS/ANN" } }, conflicts)
            assert.same({ nil, 0 }, { st:get("emails/other@example.org") })
            -- with the change vector read, it is an update; an old one is refused
            doc.Name = "Ann B."
            local ok3, index3 = st:transaction({
                { op = "put_document", id = "users/ann", document = doc, change_vector = cv },
            })
            assert.is_true(ok3)
            assert.equal("Ann B.", (st:get_document("users/ann")).Name)
            assert.is_false((st:transaction({
                { op = "delete_document", id = "users/ann", change_vector = cv } })))
            local _, cv3 = st:get_document("users/ann")
            assert.matches("TRXN:" .. index3 .. "%-", cv3)
            local _, e_index = st:get("emails/ann@example.org")
            assert.is_true((st:transaction({
                { op = "delete_document", id = "users/ann", change_vector = cv3 },
                { op = "delete", key = "emails/ann@example.org", index = e_index },
            })))
            assert.is_nil((st:get_document("users/ann")))
            assert.same({}, assert(st:query("from Users")))
            assert.same({}, st:list(""))     -- the guards are never listed
        end)

        it("raises on use after close", function()
            local other = assert(ctx.open())
            other:close()
            assert.has_error(function()
                other:transaction({ { op = "put", key = "k", value = 1, index = 0 } })
            end, "attempt to use a closed store")
            assert.has_error(function() other:update_many({ "k" }, print) end,
                "attempt to use a closed store")
        end)
    end)
end
