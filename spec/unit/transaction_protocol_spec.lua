-- Transactions, documents and queries on the wire, over a scripted transport:
-- RavenDB's cluster-wide bulk_docs (the body's exact shape, 201 and 409 as the
-- server writes them, unknown outcomes sent again with their raft-request-id),
-- /docs and /queries; etcd's one txn (a compare per key, the writes, a read of
-- every key), and the settling of its unknown outcomes.
local core = require "cmpxchg.core"
local etcd = require "cmpxchg.etcd"
local helpers = require "spec.helpers"
local json = require "cmpxchg.json"
local ravendb = require "cmpxchg.ravendb"
local store = require "cmpxchg.store"
local Scripted = require "spec.support.scripted_transport"
require "cmpxchg"       -- store:transaction and friends

local A, B = "http://a:8080", "http://b:8080"
local UUID = "%x+%-%x+%-4%x+%-%x+%-%x+"
local b64 = core.b64encode

local TIMEOUT = { "timeout: POST: timed out", "timeout" }

local OPS = {
    { op = "put", key = "emails/Ann@x.org", value = "users/ann", index = 0 },
    { op = "put", key = "counters/a", value = { n = 2 }, index = 41 },
    { op = "delete", key = "old", index = 7 },
    { op = "delete", key = "must/be/absent", index = 0 },
}

describe("transactions on the wire", function()
    local restore_clock
    before_each(function() restore_clock = select(2, helpers.fake_clock(1e9)) end)
    after_each(function() restore_clock() end)

    describe("RavenDB", function()
        local function open(t, urls)
            t:topology(urls or { A })
            local backend = assert(ravendb.open(urls or { A }, { database = "db", timeout = 5 },
                t.factory))
            return store.new(backend), backend
        end

        it("posts one cluster-wide bulk_docs: Commands, then TransactionMode", function()
            local t = Scripted.new()
            local st = open(t)
            t:reply(201, '{"Results":[{"Type":"CompareExchangePUT","Key":"emails/Ann@x.org",'
                .. '"Index":57}],"TransactionIndex":57}')
            local ok, index, cvs = st:transaction({
                OPS[1], OPS[2], OPS[3], OPS[4],
                { op = "put", key = "e", value = 1, index = 0, expires = 1800000000 },
            })
            assert.same({ true, 57 }, { ok, index })
            assert.is_nil(cvs)
            local r = t:last()
            assert.equal("POST", r.method)
            assert.matches("^" .. A .. "/databases/db/bulk_docs%?&raft%-request%-id=" .. UUID .. "$",
                r.url)
            assert.equal("application/json", r.headers["Content-Type"])
            assert.equal("5.4.0", r.headers["Raven-Client-Version"])
            assert.equal('{"Commands":['
                .. '{"Id":"emails/Ann@x.org","Document":{"Object":"users/ann"},"Index":0,'
                .. '"Type":"CompareExchangePUT"},'
                .. '{"Id":"counters/a","Document":{"Object":{"n":2}},"Index":41,'
                .. '"Type":"CompareExchangePUT"},'
                .. '{"Id":"old","Index":7,"Type":"CompareExchangeDELETE"},'
                .. '{"Id":"must/be/absent","Index":0,"Type":"CompareExchangeDELETE"},'
                .. '{"Id":"e","Document":{"Object":1,"@metadata":{"@expires":'
                .. '"2027-01-15T08:00:00.0000000Z"}},"Index":0,"Type":"CompareExchangePUT"}'
                .. '],"TransactionMode":"ClusterWide"}', (r.body:gsub("\\/", "/")))
        end)

        it("writes documents with the change vector read as OriginalChangeVector", function()
            local t = Scripted.new()
            local st = open(t)
            t:reply(201, '{"Results":[{"Type":"PUT","@id":"users/ann","@collection":"Users",'
                .. '"@change-vector":"RAFT:3-g,TRXN:60-c","@flags":"FromClusterTransaction"},'
                .. '{"Id":"users/bob","Type":"DELETE","Deleted":true,"ChangeVector":"RAFT:4-g"}],'
                .. '"TransactionIndex":60}')
            local ok, index, cvs = st:transaction({
                { op = "put_document", id = "users/ann", collection = "Users",
                  document = { Name = "Ann", ["@metadata"] = { ["@change-vector"] = "old",
                      ["@id"] = "users/ann", ["@last-modified"] = "x", Note = "kept" } } },
                { op = "delete_document", id = "users/bob", change_vector = "RAFT:2-g,TRXN:9-c" },
            })
            assert.same({ true, 60, { ["users/ann"] = "RAFT:3-g,TRXN:60-c" } }, { ok, index, cvs })
            local body = json.decode(t:last().body)
            local put, del = body.Commands[1], body.Commands[2]
            assert.same({ Id = "users/ann", ChangeVector = json.null,
                OriginalChangeVector = json.null, Type = "PUT",
                Document = { Name = "Ann", ["@metadata"] = { ["@collection"] = "Users",
                    Note = "kept" } } }, put)
            assert.same({ Id = "users/bob", ChangeVector = json.null,
                OriginalChangeVector = "RAFT:2-g,TRXN:9-c", Type = "DELETE" }, del)
        end)

        local CONFLICT = '{"Url":"/databases/db/bulk_docs","Type":"Raven.Client.Exceptions.'
            .. 'ClusterTransactionConcurrencyException","Message":"Failed to execute cluster '
            .. 'transaction due to the following issues: Concurrency check failed for putting '
            .. "the key 'counters/a'. Requested index: 41, actual index: 45\\nConcurrency check "
            .. "failed for deleting the key 'old'. Requested index: 7, actual index: -1\\n"
            .. "Guard compare exchange value 'rvn-atomic/users/ann' index does not match the "
            .. "transaction index's 0 change vector on users/ann\\nConcurrency check failed for "
            .. "putting the key 'rvn-atomic/users/ann'. Requested index: 0, actual index: 12\"}"

        it("reads a 409's violations from its message, and the values after", function()
            local t = Scripted.new()
            local st = open(t)
            t:reply(409, CONFLICT)
            t:reply(200, '{"Results":[{"Key":"counters/a","Value":{"Object":{"n":9}},"Index":45},'
                .. '{"Key":"old","Value":null,"Index":-1}]}')
            local ok, conflicts = st:transaction({ OPS[1], OPS[2], OPS[3],
                { op = "put_document", id = "users/ann", document = { Name = "Ann" } } })
            assert.is_false(ok)
            assert.same({ { key = "counters/a", index = 45, value = { n = 9 } },
                          { key = "old", index = 0 },
                          { id = "users/ann" } }, conflicts)
            assert.equal(A .. "/databases/db/cmpxchg?key=counters%2Fa&key=old", t:last().url)
        end)

        it("leaves a value out when the read finds another index than the refusal's", function()
            local t = Scripted.new()
            local st = open(t)
            t:reply(409, CONFLICT)
            t:reply(200, '{"Results":[{"Key":"counters/a","Value":{"Object":{"n":1}},"Index":41},'
                .. '{"Key":"old","Value":null,"Index":-1}]}')
            local _, conflicts = st:transaction({ OPS[2], OPS[3] })
            assert.same({ { key = "counters/a", index = 45 }, { key = "old", index = 0 } },
                conflicts)
            -- changed since the refusal: the refusal's state is the one reported
            t:reply(409, CONFLICT)
            t:reply(200, '{"Results":[{"Key":"counters/a","Value":{"Object":{"n":5}},"Index":99},'
                .. '{"Key":"old","Value":{"Object":1},"Index":98}]}')
            _, conflicts = st:transaction({ OPS[2], OPS[3] })
            assert.same({ { key = "counters/a", index = 45 }, { key = "old", index = 0 } },
                conflicts)
        end)

        it("takes ConcurrencyViolations when the body has them", function()
            local t = Scripted.new()
            local st = open(t)
            t:reply(409, '{"Type":"Raven.Client.Exceptions.ClusterTransactionConcurrency'
                .. 'Exception","Message":"...","ConcurrencyViolations":[{"Id":"COUNTERS/A",'
                .. '"Type":"CompareExchange","Expected":41,"Actual":50}]}')
            t:reply(404, "")
            local _, conflicts = st:transaction({ OPS[1], OPS[2] })
            assert.same({ { key = "counters/a", index = 50 } }, conflicts)
        end)

        it("a 409 of another kind, or one that names none of the keys, is an error", function()
            local t = Scripted.new()
            local st = open(t)
            t:reply(409, '{"Type":"Raven.Client.Exceptions.ConcurrencyException","Message":"no"}')
            local ok, err, code = st:transaction({ OPS[1] })
            assert.same({ nil, "http" }, { ok, code })
            assert.matches("HTTP 409 ConcurrencyException: no", err)
            t:reply(409, '{"Type":"Raven.Client.Exceptions.ClusterTransactionConcurrency'
                .. 'Exception","Message":"something else"}')
            ok, err, code = st:transaction({ OPS[1] })
            assert.same({ nil, "decode" }, { ok, code })
            assert.matches("names none of its keys", err)
        end)

        it("a malformed 409 is a decode error, never a raise", function()
            local t = Scripted.new()
            local st = open(t)
            for _, violations in ipairs({ "[5]", '[{"Id":1,"Actual":2}]', '[{"Id":"k"}]', "[]" }) do
                t:reply(409, '{"Type":"Raven.Client.Exceptions.ClusterTransactionConcurrency'
                    .. 'Exception","Message":"x","ConcurrencyViolations":' .. violations .. "}")
                local ok, err, code = st:transaction({ OPS[1] })
                assert.same({ nil, "decode" }, { ok, code }, err)
            end
        end)

        it("a reply without TransactionIndex is a decode error", function()
            local t = Scripted.new()
            local st = open(t)
            for _, body in ipairs({ '{"Results":[]}', '{"Results":[],"TransactionIndex":0}',
                    "<html>", '{"TransactionIndex":5}' }) do
                t:reply(201, body)
                local ok, err, code = st:transaction({ OPS[1] })
                assert.same({ nil, "decode" }, { ok, code }, err)
            end
            t:reply(500, '{"Type":"System.ArgumentOutOfRangeException","Message":"bad"}')
            local ok, err, code = st:transaction({ OPS[1] })
            assert.same({ nil, "http" }, { ok, code })
            assert.matches("HTTP 500 ArgumentOutOfRangeException: bad", err)
        end)

        it("sends an unknown outcome again with the same raft-request-id: the server's answer settles it", function()
            local t = Scripted.new()
            local st = open(t, { A, B })
            t:fail(TIMEOUT[1], TIMEOUT[2]):fail(TIMEOUT[1], TIMEOUT[2])     -- the first call
            t:reply(201, '{"Results":[],"TransactionIndex":70}')            -- sent again
            assert.same({ true, 70 }, { st:transaction({ OPS[1] }) })
            local ids = {}
            for i = 2, #t.requests do
                ids[#ids + 1] = t.requests[i].url:match("raft%-request%-id=(" .. UUID .. ")$")
            end
            assert.equal(3, #ids)
            assert.equal(ids[1], ids[2])
            assert.equal(ids[1], ids[3])
            -- a refusal answered to the resend is definite too
            t:fail(TIMEOUT[1], TIMEOUT[2]):fail(TIMEOUT[1], TIMEOUT[2]):reply(409, CONFLICT)
                :reply(404, "")
            assert.is_false((st:transaction({ OPS[2] })))
            -- twice unknown: a timeout, never a guess
            t:fail(TIMEOUT[1], TIMEOUT[2]):fail(TIMEOUT[1], TIMEOUT[2])
                :fail(TIMEOUT[1], TIMEOUT[2]):fail(TIMEOUT[1], TIMEOUT[2])
            local ok, err, code = st:transaction({ OPS[1] })
            assert.same({ nil, "timeout" }, { ok, code }, err)
        end)

        it("holds a transaction to the Raft command size", function()
            local t = Scripted.new()
            local st, backend = open(t)
            backend.txn_limits = setmetatable({ bytes = 100 }, { __index = backend.txn_limits })
            local ok, err = pcall(st.transaction, st,
                { { op = "put", key = "k", value = ("x"):rep(98), index = 0 } })
            assert.is_false(ok)
            assert.matches("^bad argument #1 to 'transaction' %(101 bytes: a RavenDB cluster%-wide "
                .. "transaction is one Raft command of at most 128 MiB", err)
            assert.equal(1, #t.requests)
        end)

        it("gets a document and its change vector; absent is nil", function()
            local t = Scripted.new()
            local st = open(t)
            t:reply(200, '{"Results":[{"Name":"Ann","@metadata":{"@collection":"Users",'
                .. '"@change-vector":"RAFT:1-g,TRXN:5-c","@id":"users/ann"}}],"Includes":{}}')
            local doc, cv = st:get_document("users/ann")
            assert.equal("Ann", doc.Name)
            assert.equal("RAFT:1-g,TRXN:5-c", cv)
            assert.equal(A .. "/databases/db/docs?id=users%2Fann", t:last().url)
            t:reply(404, "")
            assert.same({ n = 1 }, { n = select("#", st:get_document("nobody")) })
            t:reply(200, '{"Results":[{"Name":"no metadata"}]}')
            local none, err, code = st:get_document("x")
            assert.same({ nil, "decode" }, { none, code }, err)
            t:reply(503, '{"Type":"x","Message":"gone"}', { ["database-missing"] = "db" })
            none, err, code = st:get_document("x")
            assert.same({ nil, "not_found" }, { none, code }, err)
        end)

        it("posts RQL with its parameters and returns the documents", function()
            local t = Scripted.new()
            local st = open(t)
            t:reply(200, '{"Results":[{"Name":"Ann","@metadata":{"@id":"users/ann"}}],'
                .. '"TotalResults":1,"IsStale":false}')
            local docs = st:query("from Users where id() == cmpxchg($key)", { key = "emails/a" })
            assert.equal("users/ann", docs[1]["@metadata"]["@id"])
            local r = t:last()
            assert.matches("^" .. A .. "/databases/db/queries%?queryHash=%x+$", r.url)
            assert.same({ Query = "from Users where id() == cmpxchg($key)",
                QueryParameters = { key = "emails/a" } }, json.decode(r.body))
            t:reply(200, '{"Results":[]}')
            assert.same({}, st:query("from Users"))
            assert.equal('{"Query":"from Users","QueryParameters":null}', t:last().body)
            t:reply(200, '{"Results":[5]}')
            local none, _, code = st:query("from Users")
            assert.same({ nil, "decode" }, { none, code })
        end)
    end)

    describe("etcd", function()
        local C = "http://c:2379"

        local function open(t, endpoints)
            table.insert(t.script, 1, { 200, '{"header":{"revision":"1"}}', {} })
            local backend = assert(etcd.open(endpoints or { C }, { database = "app" },
                t.factory))
            return store.new(backend), backend
        end

        local function k64(key) return b64("app:" .. core.fold_key(key)) end

        -- a kv of the failure branch, as the store writes it
        local function kv(key, value, mod, created, write_id)
            return ('{"key":"%s","create_revision":"%d","mod_revision":"%d","version":"1",'
                .. '"value":"%s"}'):format(k64(key), created or mod, mod,
                b64(('{"Key":%s,"Write":"%s","Object":%s}'):format(json.encode(key),
                    write_id or "other", json.encode(value))))
        end

        local function ranges(...)
            local out = {}
            for i, kvs in ipairs({ ... }) do
                out[i] = ('{"response_range":{"header":{"revision":"90"}%s}}')
                    :format(kvs ~= "" and (',"kvs":[%s],"count":"1"'):format(kvs) or "")
            end
            return '{"header":{"revision":"90"},"responses":[' .. table.concat(out, ",") .. "]}"
        end

        -- the write id of a txn's puts
        local function write_id_of(body)
            local put = json.decode(body).success[1].request_put
            return json.decode(core.b64decode(put.value)).Write
        end

        it("sends one txn: a compare per key, the writes, a read of every key", function()
            local t = Scripted.new()
            local st = open(t)
            t:reply(200, '{"header":{"revision":"91"},"succeeded":true,"responses":[]}')
            assert.same({ true, 91 }, { st:transaction(OPS) })
            local body = json.decode(t:last().body)
            assert.equal(C .. "/v3/kv/txn", t:last().url)
            assert.same({
                { key = k64("emails/ann@x.org"), target = "CREATE", result = "EQUAL",
                  create_revision = "0" },
                { key = k64("counters/a"), target = "MOD", result = "EQUAL", mod_revision = "41" },
                { key = k64("old"), target = "MOD", result = "EQUAL", mod_revision = "7" },
                { key = k64("must/be/absent"), target = "CREATE", result = "EQUAL",
                  create_revision = "0" },
            }, body.compare)
            assert.equal(3, #body.success)          -- the check of absence writes nothing
            assert.same({ key = k64("old") }, body.success[3].request_delete_range)
            local id = write_id_of(t:last().body)
            assert.matches("^" .. UUID .. "$", id)
            assert.same({ Key = "counters/a", Write = id, Object = { n = 2 } },
                json.decode(core.b64decode(body.success[2].request_put.value)))
            for i, op in ipairs(OPS) do
                assert.same({ request_range = { key = k64(op.key) } }, body.failure[i])
            end
        end)

        it("reports the keys whose compare fails, from the failure branch", function()
            local t = Scripted.new()
            local st = open(t)
            t:reply(200, ranges(kv("emails/ann@x.org", "users/bob", 80), kv("counters/a",
                { n = 1 }, 41), "", kv("must/be/absent", 1, 85)))
            local ok, conflicts = st:transaction(OPS)
            assert.is_false(ok)
            assert.same({ { key = "emails/Ann@x.org", index = 80, value = "users/bob" },
                          { key = "old", index = 0 },
                          { key = "must/be/absent", index = 85, value = 1 } }, conflicts)
        end)

        describe("an attempt whose outcome is unknown", function()
            local GUARDED = { OPS[2], OPS[1] }          -- a compare at N > 0: sent again

            it("a guarded txn is sent again as it was; its success is ours", function()
                local t = Scripted.new()
                local st = open(t, { C, B })
                t:fail(TIMEOUT[1], TIMEOUT[2])
                t:reply(200, '{"header":{"revision":"95"},"succeeded":true}')
                assert.same({ true, 95 }, { st:transaction(GUARDED) })
                assert.equal(t.requests[2].body, t.requests[3].body)
                assert.equal(B .. "/v3/kv/txn", t.requests[3].url)
            end)

            it("a failed resend showing our write id is ours", function()
                local t = Scripted.new()
                local st = open(t, { C, B })
                t:fail(TIMEOUT[1], TIMEOUT[2])
                t:respond(function(r)
                    local id = write_id_of(r.body)
                    return 200, ranges(kv("counters/a", { n = 2 }, 93, 3, id),
                        kv("emails/ann@x.org", "users/ann", 93, 93, id))
                end)
                assert.same({ true, 93 }, { st:transaction(GUARDED) })
            end)

            it("a failed resend that proves it never applied and never will is a failure", function()
                local t = Scripted.new()
                local st = open(t, { C, B })
                -- counters/a still at 41 (our txn would have moved it), and the create's
                -- key taken: the compare on 41 holds, on the create fails
                t:fail(TIMEOUT[1], TIMEOUT[2])
                t:reply(200, ranges(kv("counters/a", { n = 1 }, 41), kv("emails/ann@x.org", "b", 50)))
                local ok = st:transaction(GUARDED)
                -- still at 41: our txn could apply later, were the create's key deleted
                assert.same({ nil }, { ok })
                -- a delete at 7 whose key is still there, created before 7, and moved on
                -- since (its compare fails for ever): never applied, never will
                t:fail(TIMEOUT[1], TIMEOUT[2])
                t:reply(200, ranges(kv("old", "x", 9, 5)))
                local ok2, conflicts = st:transaction({ OPS[3] })
                assert.is_false(ok2)
                assert.same({ { key = "old", index = 9, value = "x" } }, conflicts)
            end)

            it("anything else is a timeout, never a guess", function()
                local t = Scripted.new()
                local st = open(t, { C, B })
                t:fail(TIMEOUT[1], TIMEOUT[2])
                t:reply(200, ranges(kv("counters/a", { n = 7 }, 60), kv("emails/ann@x.org", "b", 61)))
                local ok, err, code = st:transaction(GUARDED)
                assert.same({ nil, "timeout" }, { ok, code })
                assert.matches("may have been applied", err)
                t:fail(TIMEOUT[1], TIMEOUT[2]):fail(TIMEOUT[1], TIMEOUT[2])
                ok, err, code = st:transaction(GUARDED)
                assert.same({ nil, "timeout" }, { ok, code })
                assert.matches("may have been applied", err)
            end)

            it("a txn of creates is never sent again: a read finds our write id, or it is a timeout", function()
                local t = Scripted.new()
                local st = open(t, { C, B })
                local creates = { OPS[1], { op = "put", key = "b", value = 2, index = 0 } }
                local id
                t:respond(function(r)
                    id = write_id_of(r.body)
                    return nil, TIMEOUT[1], TIMEOUT[2]
                end)
                t:respond(function(r)
                    assert.is_nil(json.decode(r.body).compare)      -- a read, not the txn
                    return 200, ranges("", kv("b", 2, 77, 77, id))
                end)
                assert.same({ true, 77 }, { st:transaction(creates) })
                assert.equal(3, #t.requests)
                t:fail(TIMEOUT[1], TIMEOUT[2])
                t:reply(200, ranges("", ""))
                local ok, _, code = st:transaction(creates)
                assert.same({ nil, "timeout" }, { ok, code })
                assert.equal(5, #t.requests)
            end)
        end)

        it("puts writes with the same expiry under one lease", function()
            local t = Scripted.new()
            local st = open(t)
            t:reply(200, '{"header":{"revision":"2"},"ID":"1","TTL":"3700"}')
            t:reply(200, '{"header":{"revision":"96"},"succeeded":true}')
            local at = 1e9 + 3600
            assert.same({ true, 96 }, { st:transaction({
                { op = "put", key = "a", value = 1, index = 0, expires = at },
                { op = "put", key = "b", value = 2, index = 0, expires = at } }) })
            assert.equal(C .. "/v3/lease/grant", t.requests[2].url)
            local body = json.decode(t:last().body)
            local lease = json.decode(t.requests[2].body).ID
            assert.equal(lease, body.success[1].request_put.lease)
            assert.equal(lease, body.success[2].request_put.lease)
        end)
    end)
end)
