-- The RavenDB protocol layer, byte for byte, over a scripted transport:
-- URLs, bodies, headers, result parsing, retries, failover, error mapping.
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"
local ravendb = require "cmpxchg.ravendb"
local store = require "cmpxchg.store"
local Scripted = require "spec.support.scripted_transport"
local helpers = require "spec.helpers"

local A, B, C = "http://a:8080", "http://b:8080", "http://c:8080"
local UUID = "%x+%-%x+%-4%x+%-%x+%-%x+"

local function open(t, urls, opts)
    opts = opts or {}
    opts.database = opts.database or "db"
    local backend = assert(ravendb.open(urls or { A }, opts, t.factory))
    return store.new(backend), backend
end

-- a transport whose first request is the topology of `urls`
local function cluster(urls, etag)
    return Scripted.new():topology(urls or { A }, etag)
end

describe("ravendb protocol", function()
    -- a clock that stands still unless a test moves it: the 60 s topology timer never
    -- fires by itself in a slow run (ASan, an aggressive collector)
    local restore_clock
    before_each(function() restore_clock = select(2, helpers.fake_clock(1e9)) end)
    after_each(function() restore_clock() end)

    describe("keys in URLs", function()
        it("percent-encodes everything but RFC 3986's unreserved set, + too", function()
            assert.equal("users%2F1", core.url_escape("users/1"))
            assert.equal("a%2Bb%20c", core.url_escape("a+b c"))
            assert.equal("A-z_0.9~", core.url_escape("A-z_0.9~"))
            assert.equal("%C3%A9%26%3D%3F%23", core.url_escape("é&=?#"))
        end)
    end)

    describe("open", function()
        it("reads the topology from the first seed and uses its nodes", function()
            local t = cluster({ B, C }, 7)
            local st, backend = open(t, { A })
            assert.equal("GET", t.requests[1].method)
            assert.equal(A .. "/topology?name=db", t.requests[1].url)
            assert.same({ B, C }, { backend.nodes[1].url, backend.nodes[2].url })
            t:reply(404, "")
            st:get("k")
            assert.equal(B .. "/databases/db/cmpxchg?key=k", t:last().url)
            assert.equal('"7"', t:last().headers["Topology-Etag"])
        end)

        it("tries the next seed when one is down", function()
            local t = Scripted.new():fail("connect: refused", "connect"):topology({ B })
            open(t, { A, B })
            assert.equal(B .. "/topology?name=db", t.requests[2].url)
        end)

        it("stops at once on an unknown database or a refused certificate", function()
            local t = Scripted.new():reply(503, '{"Type":"Error","Message":"Database shop wasn\'t found"}',
                { ["database-missing"] = "shop" })
            local st, err, code = ravendb.open({ A, B }, { database = "shop" }, t.factory)
            assert.is_nil(st)
            assert.equal("not_found", code)
            assert.matches("^not_found: database 'shop' does not exist", err)
            assert.equal(1, #t.requests)
            assert.equal(t.opened, t.closed)
            t = Scripted.new():reply(403, '{"Type":"InvalidAuth","Message":"no certificate"}')
            st, err, code = ravendb.open({ A, B }, { database = "db" }, t.factory)
            assert.is_nil(st)
            assert.equal("auth", code)
            assert.matches("^auth: HTTP 403 InvalidAuth: no certificate", err)
        end)

        it("reports the last error when no seed answers", function()
            local t = Scripted.new():fail("connect: refused a", "connect")
                :fail("timeout: b too slow", "timeout")
            local st, err, code = ravendb.open({ A, B }, { database = "db" }, t.factory)
            assert.is_nil(st)
            assert.same({ "timeout: b too slow", "timeout" }, { err, code })
        end)

        it("refuses a topology that is not one", function()
            for _, body in ipairs({ "", "[]", "{}", '{"Nodes":[]}', '{"Nodes":[{"Url":5}]}',
                                    "<html>", '{"Nodes":' }) do
                local t = Scripted.new():reply(200, body)
                local st, _, code = ravendb.open({ A }, { database = "db" }, t.factory)
                assert.is_nil(st)
                assert.equal("decode", code)
            end
        end)

        it("passes TLS settings to every connection", function()
            local t = cluster()
            open(t, { A }, { tls = { ca = "/ca.pem", verify = true } })
            assert.same({ ca = "/ca.pem", verify = true }, t.last_opts.tls)
        end)
    end)

    describe("put", function()
        it("sends key, index and a raft-request-id, with the Object body", function()
            local t = cluster()
            local st = open(t)
            t:reply(200, '{"Index":12,"Successful":true,"Value":{"Object":{"Name":"Ada"}}}')
            assert.same({ true, 12, { Name = "Ada" } }, { st:put("users/1 +x", { Name = "Ada" }, 0) })
            local r = t:last()
            assert.equal("PUT", r.method)
            assert.matches("^http://a:8080/databases/db/cmpxchg%?key=users%%2F1%%20%%2Bx&index=0"
                .. "&raft%-request%-id=" .. UUID .. "$", r.url)
            assert.equal('{"Object":{"Name":"Ada"}}', r.body)
            assert.equal("application/json", r.headers["Content-Type"])
        end)

        it("writes @expires in C#'s UTC format", function()
            local t = cluster()
            local st = open(t)
            t:reply(200, '{"Index":3,"Successful":true,"Value":null}')
            st:put("k", "v", 5, { expires = 1704164645.25 })
            assert.equal('{"Object":"v","@metadata":{"@expires":"2024-01-02T03:04:05.2500000Z"}}',
                t:last().body)
            assert.matches("index=5&", t:last().url)
        end)

        it("returns the current index and value when the compare fails", function()
            local t = cluster()
            local st = open(t)
            t:reply(200, '{"Index":9.0,"Successful":false,"Value":{"Object":"theirs",'
                .. '"@metadata":{"@expires":"2030-01-01T00:00:00.0000000Z"}}}')
            local ok, index, value = st:put("k", "mine", 0)
            assert.same({ false, 9, "theirs" }, { ok, index, value })
            assert.equal("integer", require("cmpxchg.check").math_type(index))
        end)

        it("reads Index 0 as an absent key (servers with PR 18822)", function()
            local t = cluster()
            local st = open(t)
            t:reply(200, '{"Index":0,"Successful":false,"Value":null}')
            assert.same({ false, 0 }, { st:put("k", "v", 4) })
        end)

        it("reads values written without the Object wrapper", function()
            local t = cluster()
            local st = open(t)
            t:reply(200, '{"Index":4,"Successful":false,"Value":{"ReservedUntil":"x",'
                .. '"@metadata":{"@expires":"y"}}}')
            assert.same({ false, 4, { ReservedUntil = "x" } }, { st:put("k", "v", 0) })
            t:reply(200, '{"Index":4,"Successful":false,"Value":{"Object":null}}')
            assert.same({ false, 4, json.null }, { st:put("k", "v", 0) })
        end)
    end)

    describe("delete", function()
        it("deletes by index and returns the deleted value", function()
            local t = cluster()
            local st = open(t)
            t:reply(200, '{"Index":20,"Successful":true,"Value":{"Object":[1,2]}}')
            assert.same({ true, 20, { 1, 2 } }, { st:delete("k", 19) })
            assert.equal("DELETE", t:last().method)
            assert.matches("cmpxchg%?key=k&index=19&raft%-request%-id=" .. UUID .. "$", t:last().url)
            assert.is_nil(t:last().body)
        end)

        it("reads an absent key the same on old and new servers (PR 21644)", function()
            local t = cluster()
            local st = open(t)
            t:reply(200, '{"Index":0,"Successful":false,"Value":null}')
            assert.same({ false, 0 }, { st:delete("k", 3) })
            t:reply(200, '{"Index":31,"Successful":true,"Value":null}')   -- older servers
            assert.same({ false, 0 }, { st:delete("k", 3) })
        end)

        it("returns the current value on a mismatch", function()
            local t = cluster()
            local st = open(t)
            t:reply(200, '{"Index":8,"Successful":false,"Value":{"Object":"now"}}')
            assert.same({ false, 8, "now" }, { st:delete("k", 3) })
        end)
    end)

    describe("reads", function()
        it("get: a 404 is an absent key, a result is index and value", function()
            local t = cluster()
            local st = open(t)
            t:reply(404, "")
            assert.same({ nil, 0 }, { st:get("K/1") })
            assert.equal(A .. "/databases/db/cmpxchg?key=K%2F1", t:last().url)
            assert.equal("GET", t:last().method)
            t:reply(200, '{"Results":[{"Key":"K/1","Value":{"Object":true},"Index":5}]}')
            assert.same({ true, 5 }, { st:get("K/1") })
        end)

        it("get_many repeats key= and leaves out the Index -1 entries", function()
            local t = cluster()
            local st = open(t)
            t:reply(200, '{"Results":[{"Key":"a","Value":{"Object":1},"Index":3},'
                .. '{"Key":"b","Value":null,"Index":-1},{"Key":"C","Value":{"Object":2},"Index":4}]}')
            assert.same({ a = { value = 1, index = 3 }, c = { value = 2, index = 4 } },
                st:get_many({ "a", "b", "c" }))
            assert.equal(A .. "/databases/db/cmpxchg?key=a&key=b&key=c", t:last().url)
        end)

        it("get_many splits long key lists to stay under the request-line limit", function()
            local t = cluster()
            local st = open(t)
            local keys = {}
            for i = 1, 60 do keys[i] = ("k%03d/"):format(i) .. ("x"):rep(400) end
            for _ = 1, 3 do t:reply(200, '{"Results":[]}') end
            assert.same({}, st:get_many(keys))
            assert.equal(1 + 3, #t.requests)
            for i = 2, 4 do assert.is_true(#t.requests[i].url < 16000) end
        end)

        it("list sends startsWith/start/pageSize and unwraps values", function()
            local t = cluster()
            local st = open(t)
            t:reply(200, '{"Results":[{"Key":"p/a","Value":{"Object":"x"},"Index":7}]}')
            assert.same({ { key = "p/a", index = 7, value = "x" } },
                st:list("p/", { start = 2, page_size = 5 }))
            assert.equal(A .. "/databases/db/cmpxchg?startsWith=p%2F&start=2&pageSize=5",
                t:last().url)
        end)

        it("list pages through everything and never returns atomic guards", function()
            local t = cluster()
            local st = open(t)
            local function page(from, n, guard_at)
                local items = {}
                for i = 1, n do
                    local key = i == guard_at and "rvn-atomic/users/" .. i or ("item/%05d"):format(from + i)
                    items[i] = ('{"Key":"%s","Value":{"Object":%d},"Index":%d}'):format(key, from + i, from + i)
                end
                return '{"Results":[' .. table.concat(items, ",") .. "]}"
            end
            t:reply(200, page(0, 1024, 3)):reply(200, page(1024, 1024)):reply(200, page(2048, 10))
            local items = st:list("")
            assert.equal(2057, #items)
            for _, item in ipairs(items) do assert.is_nil(item.key:find("^rvn%-atomic/")) end
            assert.matches("startsWith=&start=1024&pageSize=1024$", t.requests[3].url)
            -- start/page_size count what we return, not the guards
            t:reply(200, page(0, 10, 1))
            local some = st:list("", { start = 1, page_size = 3 })
            assert.same({ 3, 4, 5 }, { some[1].value, some[2].value, some[3].value })
            assert.matches("startsWith=&start=0&pageSize=1024$", t:last().url)
        end)
    end)

    describe("retries and failover", function()
        it("retries a write on the next node with the same raft-request-id", function()
            local t = cluster({ A, B, C })
            local st = open(t)
            t:fail("connect: refused", "connect")
             :reply(503, '{"Type":"Raven.Server.Exceptions.NodeIsPassiveException","Message":"x"}')
             :reply(200, '{"Index":50,"Successful":true,"Value":null}')
            assert.same({ true, 50, "v" }, { st:put("k", "v", 0) })
            local ids = {}
            for i = 2, 4 do
                ids[i - 1] = t.requests[i].url:match("raft%-request%-id=(" .. UUID .. ")$")
            end
            assert.truthy(ids[1])
            assert.equal(ids[1], ids[2])
            assert.equal(ids[1], ids[3])
            assert.matches("^http://a:", t.requests[2].url)
            assert.matches("^http://b:", t.requests[3].url)
            assert.matches("^http://c:", t.requests[4].url)
            -- the node that answered is preferred from now on
            t:reply(404, "")
            st:get("k")
            assert.matches("^http://c:", t:last().url)
        end)

        it("a single node gets one retry of the same write", function()
            local t = cluster()
            local st = open(t)
            t:fail("connect: reset while reading the reply", "connect")
             :reply(200, '{"Index":8,"Successful":true,"Value":null}')
            assert.same({ true, 8, 1 }, { st:put("k", 1, 0) })
            assert.equal(t.requests[2].url, t.requests[3].url)
        end)

        it("every write gets its own raft-request-id", function()
            local t = cluster()
            local st = open(t)
            t:reply(200, '{"Index":1,"Successful":true,"Value":null}')
             :reply(200, '{"Index":2,"Successful":true,"Value":null}')
            st:put("a", 1, 0)
            st:put("b", 1, 0)
            assert.are_not.equal(t.requests[2].url:match("raft.*$"), t.requests[3].url:match("raft.*$"))
        end)

        it("fails over on 408, 502, 503, 504 but not on other errors", function()
            for _, status in ipairs({ 408, 502, 503, 504 }) do
                local t = cluster({ A, B })
                local st = open(t)
                t:reply(status, ""):reply(404, "")
                assert.same({ nil, 0 }, { st:get("k") })
                assert.matches("^http://b:", t:last().url)
            end
            local t = cluster({ A, B })
            local st = open(t)
            t:reply(500, '{"Url":"/x","Type":"Raven.Client.Exceptions.CompareExchangeKeyTooBigException",'
                .. '"Message":"Key too big","Error":"..."}')
            local ok, err, code = st:put("k", 1, 0)
            assert.is_nil(ok)
            assert.equal("http", code)
            assert.equal("http: HTTP 500 CompareExchangeKeyTooBigException: Key too big", err)
            assert.equal(2, #t.requests)
        end)

        it("returns the last error when every node fails", function()
            local t = cluster({ A, B })
            local st = open(t)
            t:fail("connect: a down", "connect"):fail("timeout: b slow", "timeout")
            assert.same({ nil, "timeout: b slow", "timeout" }, { st:get("k") })
            t:reply(408, '{"Type":"System.TimeoutException","Message":"no leader"}'):reply(408, "")
            local _, _, code = st:put("k", 1, 0)
            assert.equal("timeout", code)
        end)

        -- RavenDB refuses certificates with a 403 JSON answer, never inside TLS: a TLS
        -- error is one node's trouble (a node that died right after the handshake), and
        -- another node may answer. (This spec used to say the opposite, a rule made for
        -- etcd: doc/ravendb-server-behaviour.md §1 #4.)
        it("fails over on TLS errors too", function()
            local t = cluster({ A, B })
            local st = open(t)
            t:fail("tls: the server closed the TLS connection after the handshake", "tls")
             :reply(200, '{"Index":5,"Successful":true,"Value":null}')
            assert.same({ true, 5, 1 }, { st:put("k", 1, 0) })
            assert.matches("^http://b:", t:last().url)
            t:fail("tls: certificate verify failed", "tls"):fail("tls: certificate verify failed", "tls")
            assert.same({ nil, "tls: certificate verify failed", "tls" }, { st:get("k") })
        end)

        it("asks its transports to read a failure after the TLS handshake as a dropped connection", function()
            local t = cluster()
            open(t)
            assert.is_false(t.last_opts.refuses_in_tls)
        end)

        it("refreshes the topology when the server says so", function()
            local t = cluster({ A }, 1)
            local st, backend = open(t)
            t:reply(404, "", { ["refresh-topology"] = "true" })
            t:topology({ A, B }, 2)
            st:get("k")
            assert.equal(A .. "/topology?name=db", t:last().url)
            assert.equal(2, #backend.nodes)
            t:reply(404, "")
            st:get("k")
            assert.equal('"2"', t:last().headers["Topology-Etag"])
        end)
    end)

    describe("a cluster that changes (issue 17)", function()
        local clock, restore
        before_each(function() clock, restore = helpers.fake_clock(1e9) end)
        after_each(function() restore() end)

        local D = "http://d:8080"
        local OK = '{"Index":9,"Successful":true,"Value":null}'
        local GONE = '{"Type":"Raven.Client.Exceptions.Database.DatabaseNotRelevantException","Message":"not here"}'

        it("sends Raven-Client-Version, a version of at least 5.2, on every request", function()
            local t = cluster({ A, B })
            local st = open(t)
            t:reply(404, ""):reply(200, OK):reply(200, OK)
                :reply(200, '{"Results":[]}')
            st:get("k")
            st:put("k", 1, 0)
            st:delete("k", 9)
            st:list("p")
            for _, r in ipairs(t.requests) do
                local major, minor = r.headers["Raven-Client-Version"]:match("^(%d+)%.(%d+)%.%d+$")
                assert.is_truthy(major, r.url)
                assert.is_true(tonumber(major) > 5 or (tonumber(major) == 5 and tonumber(minor) >= 2))
            end
            assert.equal(5, #t.requests)
        end)

        it("bounds the whole call by the store's timeout, every node it tries included", function()
            local t = Scripted.new(clock):topology({ A, B, C })
            local st = open(t, { A }, { timeout = 4 })
            t:fail("timeout: a slow", "timeout", 3):fail("timeout: b slow", "timeout", 1)
            local ok, err, code = st:put("k", 1, 0)
            assert.same({ nil, "timeout: b slow", "timeout" }, { ok, err, code })
            assert.equal(3, #t.requests)            -- C is not tried: no time is left
            assert.equal(4, t.requests[2].timeout)
            assert.equal(1, t.requests[3].timeout)   -- what was left of the 4 s
        end)

        it("starts the next call past a node that failed when no time was left for another", function()
            -- a call that tried every node comes back round to where it began;
            -- one that ran out of time on its first node must not start there again
            local t = Scripted.new(clock):topology({ A, B, C })
            local st = open(t, { A }, { timeout = 4 })
            t:fail("timeout: a hangs", "timeout", 4)
            assert.same({ nil, "timeout: a hangs", "timeout" }, { st:put("k", 1, 0) })
            assert.equal(2, #t.requests)            -- no time was left for B
            t:reply(404, "")
            assert.same({ nil, 0 }, { st:get("k") })
            assert.equal(B .. "/databases/db/cmpxchg?key=k", t:last().url)
        end)

        it("keeps the server's 'no leader' 408 as the reason when the next node times out", function()
            local t = Scripted.new(clock):topology({ A, B })
            local st = open(t, { A }, { timeout = 20 })
            t:reply(408, '{"Type":"System.TimeoutException","Message":"Could not send command'
                .. ' to leader because there is no leader"}', {}, 15)
             :fail("timeout: b slow", "timeout", 5)
            local ok, err, code = st:put("k", 1, 0)
            assert.is_nil(ok)
            assert.equal("timeout", code)
            assert.matches("^timeout: HTTP 408 TimeoutException: .*no leader", err)
        end)

        it("waits longer than the server's own 15 s for a leader by default", function()
            local t = cluster()
            local _, backend = open(t)
            assert.is_true(backend.timeout > 15)
        end)

        it("reads the topology again from every node it knows when every node answers 410", function()
            -- the database moved from A and B (all we know of now) to C and D
            local t = Scripted.new(clock):topology({ A, B }, 5)
            local st, backend = open(t, { A, B, C })
            t:reply(410, GONE):reply(410, GONE)
             :topology({ C, D }, 7)                     -- A's answer
             :topology({ B }, 4)                        -- B lags: older, ignored
             :topology({ C, D }, 7)                     -- C, a seed we were given
             :reply(200, OK)
            assert.same({ true, 9, 1 }, { st:put("k", 1, 0) })
            assert.same({ C, D }, { backend.nodes[1].url, backend.nodes[2].url })
            assert.equal(7, backend.topology_etag)
            assert.equal(A .. "/topology?name=db", t.requests[4].url)
            assert.equal(B .. "/topology?name=db", t.requests[5].url)
            assert.equal(C .. "/topology?name=db", t.requests[6].url)
            assert.matches("^http://c:", t:last().url)
            -- the retry is the same write: the same raft-request-id
            assert.equal(t.requests[2].url:match("raft.*$"), t:last().url:match("raft.*$"))
        end)

        it("also when the other nodes it knows are down", function()
            local t = Scripted.new(clock):topology({ A, B }, 5)
            local st, backend = open(t, { A, B, C })
            t:fail("connect: a down", "connect"):reply(410, GONE)
             :fail("connect: a down", "connect")        -- the topology from every node known
             :topology({ C }, 6):topology({ C }, 6)
             :reply(200, OK)
            assert.same({ true, 9, 1 }, { st:put("k", 1, 0) })
            assert.equal(C, backend.nodes[1].url)
        end)

        it("gives up after one more round when the database is still not there", function()
            local t = Scripted.new(clock):topology({ A }, 5)
            local st = open(t, { A })
            t:reply(410, GONE):reply(410, GONE)     -- a lone node is tried twice
             :topology({ A }, 6)
             :reply(410, GONE):reply(410, GONE)
            local ok, err, code = st:get("k")
            assert.is_nil(ok)
            assert.equal("http", code)
            assert.matches("HTTP 410 DatabaseNotRelevantException", err)
            assert.equal(6, #t.requests)
        end)

        it("never takes a topology older than the one it holds", function()
            local t = Scripted.new(clock):topology({ A, B }, 5)
            local st, backend = open(t, { A, B })
            -- A says the topology changed, but every node still serves etag 5 or older
            t:reply(404, "", { ["refresh-topology"] = "true" })
             :topology({ C }, 3):topology({ B }, 5)
            st:get("k")
            assert.equal(5, backend.topology_etag)
            assert.same({ A, B }, { backend.nodes[1].url, backend.nodes[2].url })
            -- a newer one is taken, from the first node that has it
            t:reply(404, "", { ["refresh-topology"] = "true" }):topology({ B, C }, 6)
            st:get("k")
            assert.equal(6, backend.topology_etag)
            assert.same({ B, C }, { backend.nodes[1].url, backend.nodes[2].url })
        end)

        it("reads the topology again every 60 s, as the Node client does", function()
            local t = Scripted.new(clock):topology({ A }, 5)
            local st, backend = open(t, { A })
            t:reply(404, "")
            st:get("k")
            assert.equal(2, #t.requests)
            clock.now = clock.now + 61
            t:reply(404, ""):topology({ A, B }, 6)
            st:get("k")
            assert.equal(A .. "/topology?name=db", t:last().url)
            assert.equal(2, #backend.nodes)
            t:reply(404, "")
            st:get("k")                                 -- not again before 60 s more
            assert.matches("cmpxchg", t:last().url)
        end)

        it("puts nodes in rehab last, after every member", function()
            local t = Scripted.new(clock):topology({ A, B, C }, 5, { "Rehab", "Member", "Member" })
            local st, backend = open(t, { A })
            assert.same({ B, C, A }, { backend.nodes[1].url, backend.nodes[2].url,
                backend.nodes[3].url })
            t:fail("connect: b down", "connect"):fail("connect: c down", "connect"):reply(404, "")
            assert.same({ nil, 0 }, { st:get("k") })
            assert.matches("^http://a:", t:last().url)
        end)

        it("sends a write with the raft-request-id it is given", function()
            local t = cluster()
            local _, backend = open(t)
            t:reply(200, OK):reply(200, OK)
            backend:put("k", "1", 0, nil, "11111111-2222-4333-8444-555555555555")
            assert.matches("&raft%-request%-id=11111111%-2222%-4333%-8444%-555555555555$", t:last().url)
            backend:delete("k", 9, "11111111-2222-4333-8444-666666666666")
            assert.matches("&raft%-request%-id=11111111%-2222%-4333%-8444%-666666666666$", t:last().url)
            assert.is_true(backend.write_ids)
        end)
    end)

    describe("white space", function()
        it("lists a prefix of white space only by its own keys, not the whole database", function()
            -- the server reads a blank startsWith as none (IsNullOrWhiteSpace) and lists it all
            local t = cluster()
            local st = open(t)
            t:reply(200, '{"Results":[{"Key":"  a","Value":{"Object":1},"Index":3},'
                .. '{"Key":" b","Value":{"Object":2},"Index":4},'
                .. '{"Key":"\194\160 c","Value":{"Object":5},"Index":6},'
                .. '{"Key":"a","Value":{"Object":3},"Index":5}]}')
            local items = st:list("  ")
            assert.equal(1, #items)
            assert.equal("  a", items[1].key)
            assert.matches("startsWith=&start=0&pageSize=1024$", t:last().url)
            t:reply(200, '{"Results":[{"Key":"\194\160 c","Value":{"Object":5},"Index":6},'
                .. '{"Key":"a","Value":{"Object":3},"Index":5}]}')
            items = st:list("\194\160", { start = 0, page_size = 5 })
            assert.same({ "\194\160 c" }, { items[1].key, items[2] and items[2].key })
        end)

        it("refuses keys of Unicode white space only, as the server would", function()
            local t = cluster()
            local st = open(t)
            for _, key in ipairs({ "\194\160", " \226\128\131 ", "\227\128\128",
                                   "\226\128\168", "\194\133", "\225\154\128" }) do
                assert.has_error(function() st:put(key, 1, 0) end,
                    "bad argument #1 to 'put' (key must not be empty or blank)")
            end
            t:reply(404, "")
            assert.same({ nil, 0 }, { st:get("\239\187\191") })  -- U+FEFF is no white space in .NET
        end)
    end)

    describe("error mapping", function()
        it("maps statuses and RavenDB's error JSON to the contract", function()
            local cases = {
                { 401, "", "auth" },
                { 403, '{"Type":"InvalidAuth","Message":"forbidden"}', "auth" },
                { 500, '{"Type":"Raven.Client.Exceptions.Database.DatabaseDoesNotExistException",'
                    .. '"Message":"Database db was not found"}', "not_found" },
                { 400, '{"Type":"Error","Message":"There is no handler"}', "http" },
                { 409, "not json at all", "http" },
            }
            for _, c in ipairs(cases) do
                local t = cluster()
                local st = open(t)
                t:reply(c[1], c[2])
                local ok, err, code = st:put("k", 1, 0)
                assert.is_nil(ok)
                assert.equal(c[3], code)
                assert.matches("^" .. c[3] .. ": ", err)
            end
        end)

        it("turns any malformed 200 reply into a decode error, never a crash", function()
            local bodies = { "", "null", "42", '"s"', "[1]", "{", '{"Index":"x","Successful":true}',
                '{"Index":1}', '{"Successful":true}', '{"Results":5}', '{"Results":[5]}',
                '{"Results":[{"Key":1,"Index":1}]}', '{"Results":[{"Key":"k","Index":"a"}]}',
                "\0\1\2", ("["):rep(5000),
                -- right fields, broken text: replies are checked whole, not only where read
                '{"Index":5,"Successful":true', '{"Index":5,"Successful":true} x',
                '{"Index":5,"Successful":true,}', '{"Index":5,"Value":{"Object":tru},"Successful":true}' }
            for _, body in ipairs(bodies) do
                for _, op in ipairs({ "put", "delete", "get", "get_many", "list" }) do
                    local t = cluster()
                    local st = open(t)
                    t:reply(200, body)
                    local args = { put = { "k", 1, 1 }, delete = { "k", 1 }, get = { "k" },
                                   get_many = { { "a", "b" } }, list = { "p" } }
                    local ok, res, err, code = pcall(st[op], st, (table.unpack or unpack)(args[op]))
                    assert.is_true(ok, op .. " raised on " .. body .. ": " .. tostring(res))
                    assert.is_nil(res, ("%s accepted %q"):format(op, body))
                    assert.equal("decode", code, op .. " on " .. body .. ": " .. tostring(err))
                end
            end
        end)
    end)
end)
