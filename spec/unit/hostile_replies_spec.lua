-- Replies and topologies from a server that is wrong, exactly, over a scripted
-- transport: each must give a `decode` (or, past a bound, an `http`) error,
-- never a raise or an endless loop. Indexes that are 0, negative, fractions,
-- strings or too big; Results and kvs of the wrong shape; etcd values that
-- are not ours; auth tokens that would inject headers; pages that do not
-- advance or never end; topologies that hand out foreign nodes. Plus
-- get_many on tables with metamethods, and URLs refused and masked by the
-- cosocket transport. The same misbehaviour over real sockets, through both
-- transports: spec/integration/hostile_spec.lua and nginx_hostile_spec.lua.
local core = require "cmpxchg.core"
local etcd = require "cmpxchg.etcd"
local json = require "cmpxchg.json"
local cluster_mod = require "cmpxchg.cluster"
local ravendb = require "cmpxchg.ravendb"
local store = require "cmpxchg.store"
local Scripted = require "spec.support.scripted_transport"

local b64 = core.b64encode
local unpack = table.unpack or unpack

local A, B = "http://a:8080", "http://b:8080"

--- Calls st[op](st, ...) and checks that it returned nil, "<code>: ...", code.
local function returns(code, st, op, ...)
    local r = { pcall(st[op], st, ...) }
    assert.is_true(r[1], ("%s raised: %s"):format(op, tostring(r[2])))
    assert.is_nil(r[2], ("%s accepted it: %s, %s"):format(op, tostring(r[2]), tostring(r[3])))
    assert.equal(code, r[4], tostring(r[3]))
    assert.matches("^" .. code .. ": ", r[3])
    return r[3]
end

--- Runs `fn` with cluster_mod.MAX_LIST_ITEMS set to `n`.
local function with_max_items(n, fn)
    local saved = cluster_mod.MAX_LIST_ITEMS
    cluster_mod.MAX_LIST_ITEMS = n
    local ok, err = pcall(fn)
    cluster_mod.MAX_LIST_ITEMS = saved
    assert(ok, err)
end

describe("a wrong RavenDB", function()
    local function open(t, urls, opts)
        opts = opts or {}
        opts.database = "db"
        local backend = assert(ravendb.open(urls or { A }, opts, t.factory))
        return store.new(backend), backend
    end

    local function cluster(urls)
        return Scripted.new():topology(urls or { A })
    end

    local function items(keys)
        local out = {}
        for i, key in ipairs(keys) do
            out[i] = ('{"Key":"%s","Value":{"Object":%d},"Index":%d}'):format(key, i, i)
        end
        return '{"Results":[' .. table.concat(out, ",") .. "]}"
    end

    it("a write reply's Index must be an integer, positive when it succeeded", function()
        for _, reply in ipairs({ '{"Index":0,"Successful":true,"Value":null}',
                '{"Index":-5,"Successful":true}', '{"Index":-1,"Successful":false}',
                '{"Index":2.5,"Successful":true}', '{"Index":"12","Successful":true}',
                '{"Index":1e300,"Successful":true}', '{"Index":[1],"Successful":true}' }) do
            for _, op in ipairs({ { "put", "k", 1, 0 }, { "delete", "k", 3 } }) do
                local t = cluster()
                local st = open(t)
                t:reply(200, reply)
                returns("decode", st, unpack(op))
            end
        end
    end)

    it("an error answer's message reaches ours without its control characters", function()
        local t = cluster()
        local st = open(t)
        t:reply(500, '{"Type":"X.BoomException","Message":"line\\r\\nInjected: 1\\u001b[31m"}')
        local err = returns("http", st, "get", "k")
        assert.equal("http: HTTP 500 BoomException: line\\13\\10Injected: 1\\27[31m", err)
    end)

    it("a lock granted at index 0 is a decode error, not a lock that raises later", function()
        local t = cluster()
        local st = open(t)
        t:reply(200, '{"Index":0,"Successful":true,"Value":null}')
        local lock = require "cmpxchg.lock"
        local ok, l, err, code = pcall(lock.acquire, st, "k", { timeout = 0 })
        assert.is_true(ok, tostring(l))
        assert.is_nil(l)
        assert.equal("decode", code, err)
    end)

    it("GET results: an array of items with a string Key and an integer Index", function()
        for _, body in ipairs({ '{"Results":{"Key":"k","Index":5}}',
                '{"Results":[{"Key":"k","Value":{"Object":1},"Index":1.5}]}',
                '{"Results":[{"Key":"k","Value":{"Object":1},"Index":"5"}]}',
                '{"Results":[{"Key":"k","Value":{"Object":1},"Index":1e300}]}',
                '{"Results":[{"Key":"k","Value":{"Object":1},"Index":-7}]}',
                '{"Results":[{"Key":"k","Value":{"Object":1},"Index":null}]}',
                '{"Results":[{"Key":"k","Index":1},{"Key":"k2","Index":2}]}' }) do
            for _, op in ipairs({ { "get", "k" }, { "get_many", { "k" } } }) do
                local t = cluster()
                local st = open(t)
                t:reply(200, body)
                returns("decode", st, unpack(op))
            end
        end
        -- -1 is RavenDB's "missing" in a GET by keys (§3.3)
        local t = cluster()
        local st = open(t)
        t:reply(200, '{"Results":[{"Key":"k","Value":null,"Index":-1},{"Key":"k2","Value":null,'
            .. '"Index":-1}]}')
        assert.same({}, st:get_many({ "k", "k2" }))
    end)

    it("list: a page that brings nothing new is a decode error, not an endless loop", function()
        local page = {}
        for i = 1, 1024 do page[i] = ("p/%05d"):format(i) end
        local t = cluster()
        local st = open(t)
        t:reply(200, items(page)):reply(200, items(page))
        local err = returns("decode", st, "list", "p/")
        assert.matches("no progress", err)
        assert.equal(3, #t.requests)
    end)

    it("list: items seen on the page before (shifted by a write) are left out", function()
        local first, second = {}, {}
        for i = 1, 1024 do first[i] = ("p/%05d"):format(i) end
        for i = 1, 10 do second[i] = ("p/%05d"):format(1020 + i) end     -- 1021-1024 again
        local t = cluster()
        local st = open(t)
        t:reply(200, items(first)):reply(200, items(second))
        local got = st:list("p/")
        assert.equal(1030, #got)
        assert.equal("p/01030", got[1030].key)
    end)

    it("list: a page of more items than asked for is a decode error", function()
        local t = cluster()
        local st = open(t)
        t:reply(200, items({ "p/1", "p/2", "p/3" }))
        returns("decode", st, "list", "p/", { page_size = 2 })
    end)

    it("list: a listing that never ends stops after cluster_mod.MAX_LIST_ITEMS items", function()
        with_max_items(3000, function()
            local t = cluster()
            local st = open(t)
            for p = 0, 3 do
                local page = {}
                for i = 1, 1024 do page[i] = ("p/%07d"):format(p * 1024 + i) end
                t:reply(200, items(page))
            end
            local err = returns("http", st, "list", "p/")
            assert.matches("more than 3000 items", err)
        end)
    end)

    describe("topologies", function()
        local function topology(urls, etag)
            local list = {}
            for i, url in ipairs(urls) do
                list[i] = ('{"Url":%s,"ClusterTag":"%s"}'):format(json.encode(url),
                    string.char(64 + i))
            end
            return ('{"Nodes":[%s],"Etag":%d}'):format(table.concat(list, ","), etag or 1)
        end

        it("an https seed never uses the http nodes of its topology", function()
            local t = Scripted.new():reply(200, topology({ "http://b:8080" }))
            local st, err, code = ravendb.open({ "https://a:443" }, { database = "db" }, t.factory)
            assert.is_nil(st)
            assert.equal("decode", code)
            assert.matches("no https node", err)
            t = Scripted.new():reply(200, topology({ "http://b:8080", "https://c:443" }))
            local _, backend = open(t, { "https://a:443" })
            assert.same({ "https://c:443" }, { backend.nodes[1].url, backend.nodes[2] })
            t:reply(404, "")
            assert.same({ nil, 0 }, { store.new(backend):get("k") })
            assert.matches("^https://c:443/", t:last().url)
        end)

        it("refuses node URLs that are not scheme://host:port", function()
            for _, url in ipairs({ "http://b:8080/x HTTP/1.1\r\nX-Injected: 1", "http://b :80",
                    "http://u:p@b:8080", "http://b:8080/path", "http://b:0", "http://b:65536",
                    "http://b:8080?x", "ftp://b", "http://", "http://b\0c", ("http://b"):rep(100),
                    "http://b:8080\t" }) do
                local t = Scripted.new():reply(200, topology({ url }))
                local st, err, code = ravendb.open({ A }, { database = "db" }, t.factory)
                assert.is_nil(st, url)
                assert.equal("decode", code, url)
                assert.is_nil(err:find("[\r\n%z]"), "a control character in: " .. err)
            end
            local many = {}
            for i = 1, 65 do many[i] = ("http://n%d:8080"):format(i) end
            local t = Scripted.new():reply(200, topology(many))
            assert.equal("decode", select(3, ravendb.open({ A }, { database = "db" }, t.factory)))
            -- trailing slashes, upper-case schemes and IPv6 hosts are fine
            t = Scripted.new():reply(200, topology({ "HTTP://[::1]:8080/", "http://b_1.x-y:80" }))
            local _, backend = open(t)
            assert.same({ "HTTP://[::1]:8080", "http://b_1.x-y:80" },
                { backend.nodes[1].url, backend.nodes[2].url })
        end)

        it("a bad topology from a refresh leaves the nodes as they were", function()
            local t = cluster({ A, B })
            local st, backend = open(t)
            t:reply(404, "", { ["refresh-topology"] = "true" })
            -- newer than the one held, so it is taken, and refused while taken
            t:reply(200, topology({ "http://evil:80/\r\nX: 1" }, 99))
            assert.same({ nil, 0 }, { st:get("k") })
            assert.same({ A, B }, { backend.nodes[1].url, backend.nodes[2].url })
        end)
    end)
end)

describe("a wrong etcd", function()
    local E = "http://e:2379"
    local function H(rev) return ('"header":{"revision":"%s"}'):format(rev) end

    local function open(t, opts)
        t.script = t.script or {}
        table.insert(t.script, 1, { 200, "{" .. H(1) .. "}", {} })     -- the probe at open
        opts = opts or {}
        opts.database = "app"
        return store.new(assert(etcd.open({ E }, opts, t.factory)))
    end

    local function kv(key, rev, value64)
        return ('{"key":"%s","mod_revision":%s,"value":%s}'):format(b64(key), rev, value64
            or json.encode(b64(('{"Key":"%s","Write":"w","Object":1}'):format(key))))
    end

    local function range(kvs, more)
        return ("{%s,\"kvs\":[%s]%s}"):format(H(9), table.concat(kvs, ","),
            more and ',"more":true' or "")
    end

    local function txn(kvs)
        return ('{%s,"succeeded":true,"responses":[{"response_range":{"kvs":[%s]}}]}')
            :format(H(9), table.concat(kvs, ","))
    end

    it("a kv's mod_revision is a positive integer, its value base64 of our envelope", function()
        local bad = { { '"1.5"' }, { '"-3"' }, { '"0"' }, { '"1e3"' }, { '"0x10"' },
            { '"99999999999999999999"' }, { "1e30" }, { "{}" }, { '"5"', '{"a":1}' },
            { '"5"', "[1]" }, { '"5"', "5" }, { '"5"', '"@@@"' },
            { '"5"', json.encode(b64('{"Object":1}')) }, { '"5"', json.encode(b64("[1,2]")) } }
        for _, case in ipairs(bad) do
            local t = Scripted.new()
            local st = open(t)
            t:reply(200, range({ kv("app:k", case[1], case[2]) }))
            returns("decode", st, "get", "k")
            t:reply(200, txn({ kv("app:k", case[1], case[2]) }))
            returns("decode", st, "get_many", { "k" })
            t:reply(200, range({ kv("app:p/a", case[1], case[2]) }))
            returns("decode", st, "list", "p/")
        end
    end)

    it("a kv of another key than the one asked for is a decode error", function()
        local t = Scripted.new()
        local st = open(t)
        t:reply(200, range({ kv("app:other", '"5"') }))
        returns("decode", st, "get", "k")
        t:reply(200, txn({ kv("app:other", '"5"') }))
        returns("decode", st, "get_many", { "k" })
        t:reply(200, range({ kv("app:k", '"5"') }))
        assert.same({ 1, 5 }, { st:get("k") })
    end)

    it("an error answer's message reaches ours without its control characters", function()
        local t = Scripted.new()
        local st = open(t)
        t:reply(400, '{"error":"bad\\r\\nInjected: 1","code":3}')
        local err = returns("http", st, "get", "k")
        assert.equal("http: HTTP 400: bad\\13\\10Injected: 1", err)
    end)

    it("a write that succeeded at revision 0 or less is a decode error", function()
        for _, rev in ipairs({ "0", "-9", "1.5", "x" }) do
            local t = Scripted.new()
            local st = open(t)
            t:reply(200, ('{%s,"succeeded":true}'):format(H(rev)))
            returns("decode", st, "put", "k", 1, 0)
            t:reply(200, ('{%s,"succeeded":true,"responses":[{"response_delete_range":'
                .. '{"prev_kvs":[%s]}}]}'):format(H(rev), kv("app:k", '"4"')))
            returns("decode", st, "delete", "k", 4)
        end
    end)

    it("never puts an auth token that could break a header into one", function()
        for _, token in ipairs({ '"t\\r\\nX-Injected: 1"', '"t\\u0000"', '"a b"', '""', "5",
                "{}", json.encode(("x"):rep(5000)) }) do
            local t = Scripted.new():reply(200, ("{%s,\"token\":%s}"):format(H(1), token))
            local ok, st, err, code = pcall(etcd.open, { E }, { database = "app", user = "u",
                password = "p" }, t.factory)
            assert.is_true(ok, tostring(st))
            assert.is_nil(st)
            assert.equal("decode", code, err)
            assert.equal(1, #t.requests)
        end
    end)

    it("list: keys outside the prefix, seen twice, or more pages with none are errors", function()
        local a, b = kv("app:p/a", '"5"'), kv("app:p/b", '"6"')
        for _, pages in ipairs({ { range({ kv("app:q/x", '"5"') }) },
                { range({ a, b }, true), range({ a, b }, true) },
                { range({ a, a }) }, { range({}, true) } }) do
            local t = Scripted.new()
            local st = open(t)
            for _, page in ipairs(pages) do t:reply(200, page) end
            returns("decode", st, "list", "p/")
        end
        -- a page of more kvs than the limit asked for
        local t = Scripted.new()
        local st = open(t)
        t:reply(200, range({ a, b }))
        returns("decode", st, "list", "p/", { page_size = 1 })
    end)

    it("list: a listing that never ends stops after cluster_mod.MAX_LIST_ITEMS items", function()
        with_max_items(1000, function()
            local t = Scripted.new()
            local st = open(t)
            for p = 0, 2 do
                local kvs = {}
                for i = 1, 512 do kvs[i] = kv(("app:p/%06d"):format(p * 512 + i), '"7"') end
                t:reply(200, range(kvs, true))
            end
            local err = returns("http", st, "list", "p/")
            assert.matches("more than 1000 items", err)
        end)
    end)
end)

describe("store:get_many on a table with metamethods", function()
    -- Lua 5.1 and LuaJIT ignore __len on tables
    local len_works = #setmetatable({}, { __len = function() return 1 end }) == 1

    it("reads the keys once, through __index and __len, and asks for exactly those", function()
        local cmpxchg = require "cmpxchg"
        local st = assert(cmpxchg.open(":memory:"))
        assert(st:put("a", 1, 0))
        assert(st:put("b", 2, 0))
        if len_works then
            -- the embedded store reads the array in C, raw: it got none of these before
            local proxy = setmetatable({}, { __index = { "a", "b", "c" },
                                             __len = function() return 3 end })
            local map = st:get_many(proxy)
            assert.same({ 1, 2 }, { map.a.value, map.b.value })
            assert.is_nil(map.c)
            local ok, err = pcall(st.get_many, st,
                setmetatable({}, { __len = function() return {} end }))
            assert.is_false(ok)
            assert.matches("bad argument #1 to 'get_many'", err)
        end
        -- an __index that answers past the end is not read past #keys
        local endless = setmetatable({ "a" }, { __index = function() return 5 end })
        local got = st:get_many(endless)
        assert.equal("a", (next(got)))
        assert.is_nil(next(got, "a"))
        st:close()
    end)

    it("on RavenDB too: the backend gets a plain array", function()
        local t = Scripted.new():topology({ A })
        local st = store.new(assert(ravendb.open({ A }, { database = "db" }, t.factory)))
        t:reply(200, '{"Results":[{"Key":"a","Value":{"Object":1},"Index":3}]}')
        local endless = setmetatable({ "a" }, { __index = function() return 5 end })
        assert.same({ a = { value = 1, index = 3 } }, st:get_many(endless))
        assert.equal(A .. "/databases/db/cmpxchg?key=a", t:last().url)
    end)
end)

describe("the cosocket transport's URLs", function()
    -- requests refused before any socket: these run outside nginx too
    local http = require("cmpxchg.transport.ngx").new()

    it("refuses a URL with a control character, a space, user info or a bad port", function()
        for _, url in ipairs({ "http://a:80/x HTTP/1.1\r\nX-Injected: 1", "http://a:80/x y",
                "http://a:80/\0", "http://u:secret@a:80/", "http://a:0/", "http://a:65536/",
                "http://a:123456/", "ftp://a/", "http://a b/" }) do
            local status, err, code = http:request("GET", url, nil, nil, 1)
            assert.is_nil(status, url)
            assert.equal("connect", code)
            assert.matches("not an http%(s%) URL", err)
            assert.is_nil(err:find("secret", 1, true), err)
        end
    end)
end)

describe("the cosocket transport's TLS handshake", function()
    -- a stand-in cosocket, as lua-nginx-module 0.10.23 with lua-resty-core
    -- 0.1.25 behave when a handshake completes at once and fails verification:
    -- asked for no session they return true (the outcome is lost); asked for
    -- it they raise from their assert (lua-nginx-module#2506)
    local http, calls, closed, outcome

    before_each(function()
        calls, closed, outcome = {}, 0, "lost"
        local sock = {}
        function sock.settimeouts() end
        function sock.connect() return true end
        function sock.getreusedtimes() return 0 end
        function sock.close() closed = closed + 1 end
        function sock.sslhandshake(_, session, host, verify)
            calls[#calls + 1] = { session = session, host = host, verify = verify }
            if outcome == "async failure" then return nil, "19: self-signed certificate" end
            if outcome == "verified" then return session ~= false and {} or true end
            if session == false or not verify then return true end
            assert(false)               -- lua-resty-core 0.1.25's assert(rc == FFI_OK)
        end
        rawset(_G, "ngx", { socket = { tcp = function() return sock end } })
        package.loaded["cmpxchg.transport.ngx"] = nil
        http = require("cmpxchg.transport.ngx").new({ tls = {} })
    end)

    after_each(function()
        rawset(_G, "ngx", nil)
        package.loaded["cmpxchg.transport.ngx"] = nil
    end)

    local function open()
        local url = "https://127.0.0.1:8443/"
        return http:open_connection("GET", url, "127.0.0.1", 8443, "https",
            require("cmpxchg.runtime").monotime() + 5)
    end

    it("does not take a lost verification for a verified server", function()
        local sock, err, code = open()
        assert.is_nil(sock)
        assert.equal("tls", code)
        assert.matches("TLS handshake failed: the server's certificate or name did not verify",
            err, 1, true)
        assert.matches("lua_ssl_trusted_certificate", err, 1, true)
        assert.equal(1, closed)
        assert.same({ { session = nil, host = "127.0.0.1", verify = true } }, calls)
    end)

    it("reports a failure the handshake returns, and accepts a verified server", function()
        outcome = "async failure"
        local sock, err, code = open()
        assert.is_nil(sock)
        assert.equal("tls", code)
        assert.matches("TLS handshake failed: 19: self-signed certificate", err, 1, true)
        outcome = "verified"
        sock, err = open()
        assert.is_table(sock, err)
        assert.is_false(err)            -- (the second value: not a reused connection)
    end)

    it("asks for no session when it does not verify", function()
        http = require("cmpxchg.transport.ngx").new({ tls = { verify = false } })
        assert.is_table((open()))
        assert.same({ { session = false, host = "127.0.0.1", verify = false } }, calls)
    end)
end)
