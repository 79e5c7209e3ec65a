-- The libcurl engine's contract (csrc/http.c), against a local Node server.
local core = require "cmpxchg.core"
local helpers = require "spec.helpers"
local json = require "cmpxchg.json"

describe("cmpxchg.core.http_new", function()
    local base, stop

    setup(function() base, stop = helpers.http_test_server() end)
    teardown(function() stop() end)

    it("sends method, headers and body, and returns status, body, headers", function()
        local h = core.http_new()
        local status, body, headers = h:request("PUT", base .. "/echo?a=1", '{"x":1}',
            { ["Content-Type"] = "application/json", ["Topology-Etag"] = '"7"' }, 5)
        assert.equal(200, status)
        local echo = json.decode(body)
        assert.equal("PUT", echo.method)
        assert.equal("/echo?a=1", echo.url)
        assert.equal('{"x":1}', echo.body)
        assert.equal('"7"', echo.headers["topology-etag"])
        assert.is_nil(echo.headers.expect)
        assert.equal("application/json", headers["content-type"])
        assert.equal("one", headers["x-multi"])
        for _, method in ipairs({ "GET", "DELETE" }) do
            status, body = h:request(method, base .. "/echo", nil, nil, 5)
            assert.equal(200, status)
            echo = json.decode(body)
            assert.equal(method, echo.method)
            assert.equal("", echo.body)
        end
        h:close()
    end)

    it("reports only the reply headers asked for by reply_headers", function()
        local h = core.http_new({ reply_headers = { "x-multi", "content-type" } })
        local status, _, headers = h:request("GET", base .. "/echo", nil, nil, 5)
        assert.equal(200, status)
        assert.same({ ["x-multi"] = "one", ["content-type"] = "application/json" }, headers)
        h:close()
        h = core.http_new({ reply_headers = {} })
        assert.same({}, select(3, h:request("GET", base .. "/echo", nil, nil, 5)))
        h:close()
        for _, bad in ipairs({ "x-multi", { 1 }, { ("x"):rep(65) },
                { "a", "b", "c", "d", "e", "f", "g", "h", "i" } }) do
            assert.has_error(function() core.http_new({ reply_headers = bad }) end)
        end
        collectgarbage()        -- handles whose options were refused are collected
    end)

    it("keeps one connection alive across requests", function()
        local h = core.http_new()
        local ports = {}
        for i = 1, 5 do
            local _, body = h:request("GET", base .. "/echo", nil, nil, 5)
            ports[i] = json.decode(body).remotePort
        end
        for i = 2, 5 do assert.equal(ports[1], ports[i]) end
        h:close()
    end)

    it("never sends a write again by itself when a reused connection dies unanswered", function()
        -- libcurl resends a request whose kept-alive connection dies before any
        -- reply byte; for a write that reached the server that applies it twice
        local h = core.http_new()
        assert.equal(200, (h:request("GET", base .. "/echo", nil, nil, 5)))   -- kept alive
        local id = tostring(core.uuid())
        local status, err, code = h:request("POST", base .. "/dropcount?id=" .. id, '{"w":1}',
            { ["Content-Type"] = "application/json" }, 5)
        assert.is_nil(status)
        assert.equal("connect", code, err)
        assert.matches("outcome is unknown", err)
        local _, count = h:request("GET", base .. "/count?id=" .. id, nil, nil, 5)
        assert.equal("1", count)
        h:close()
    end)

    it("returns error statuses as statuses, not errors", function()
        local h = core.http_new()
        for _, status in ipairs({ 404, 408, 500, 503 }) do
            local got, body = h:request("GET", base .. "/status/" .. status, nil, nil, 5)
            assert.equal(status, got)
            assert.equal("status " .. status, body)
        end
        h:close()
    end)

    it("decodes gzip replies", function()
        local h = core.http_new()
        local status, body = h:request("GET", base .. "/gzip", nil, nil, 5)
        assert.equal(200, status)
        assert.is_true(json.decode(body).compressed)
        h:close()
    end)

    it("reports refused connections, timeouts and dropped replies with codes", function()
        local h = core.http_new()
        local ok, err, code, unsent = h:request("GET", "http://127.0.0.1:1/", nil, nil, 5)
        assert.same({ nil, "connect", true }, { ok, code, unsent })
        assert.matches("^connect: GET http://127.0.0.1:1/", err)
        local t0 = core.monotime()
        ok, err, code = h:request("GET", base .. "/slow?ms=3000", nil, nil, 0.2)
        assert.same({ nil, "timeout" }, { ok, code })
        assert.matches("^timeout:", err)
        assert.is_true(core.monotime() - t0 < 2)
        -- a timeout under a millisecond is one, not "none" (libcurl's 0)
        t0 = core.monotime()
        ok, err, code = h:request("GET", base .. "/slow?ms=3000", nil, nil, 0.0004)
        assert.same({ nil, "timeout" }, { ok, code }, err)
        assert.is_true(core.monotime() - t0 < 2)
        ok, err, code, unsent = h:request("GET", base .. "/drop", nil, nil, 5)
        assert.same({ nil, "connect", false }, { ok, code, unsent })   -- it was read
        assert.matches("^connect: GET .*/drop", err)
        -- and the handle still works afterwards
        assert.equal(200, (h:request("GET", base .. "/echo", nil, nil, 5)))
        h:close()
    end)

    it("takes large bodies", function()
        local h = core.http_new()
        local status, body = h:request("GET", base .. "/big?bytes=3000000", nil, nil, 10)
        assert.equal(200, status)
        assert.equal(3000000, #body)
        h:close()
    end)

    it("refuses reply headers over 64 KB, and still works afterwards", function()
        local h = core.http_new()
        assert.equal(200, (h:request("GET", base .. "/bigheaders?kb=40", nil, nil, 5)))
        local ok, err, code = h:request("GET", base .. "/bigheaders?kb=80", nil, nil, 5)
        assert.is_nil(ok)
        assert.equal("http", code)
        assert.matches("^http: GET .*/bigheaders%?kb=80: the reply is too large", err)
        assert.equal(200, (h:request("GET", base .. "/echo", nil, nil, 5)))
        h:close()
    end)

    it("refuses bad arguments and header injection", function()
        local h = core.http_new()
        assert.has_error(function() h:request("PATCH", base, nil, nil, 1) end)
        assert.has_error(function() h:request("GET", base, nil, "headers", 1) end)
        assert.has_error(function() h:request("GET", base, nil, nil, -1) end)
        assert.has_error(function() h:request("GET", base, nil, { ["A"] = "b\r\nEvil: 1" }, 1) end)
        assert.has_error(function() h:request("GET", base, nil, { ["A"] = "b\rEvil: 1" }, 1) end)
        assert.has_error(function() h:request("GET", base, nil, { ["A"] = "b\nEvil: 1" }, 1) end)
        assert.has_error(function() h:request("GET", base, nil, { ["A: x"] = "b" }, 1) end)
        assert.has_error(function() h:request("GET", base, nil, { [1] = "b" }, 1) end)
        assert.has_error(function() core.http_new({ tls = "yes" }) end)
        assert.has_error(function() core.http_new({ connect_timeout = 0 }) end)
        h:close()
    end)

    it("streams a reply line by line, lines up to max_line however many come at once",
        function()
            local h = core.http_new()
            -- 40 lines of the bound in one write: more than its room, never one too large
            local s, status = assert(h:stream("GET", base .. "/lines?n=40&len=65536", nil, nil, 30,
                65536))
            assert.equal(200, status)
            for i = 1, 40 do
                local line, err = s:read_line(30)
                assert.equal(65536, line and #line, ("line %d: %s"):format(i, tostring(err)))
            end
            local last, _, how = s:read_line(30)
            assert.is_nil(last)
            assert.equal("closed", how)
            s:close()
            -- one byte over: an "http" error
            s = assert(h:stream("GET", base .. "/lines?n=2&len=65537", nil, nil, 30, 65536))
            local line, _, code = s:read_line(30)
            assert.is_nil(line)
            assert.equal("http", code)
            s:close()
            h:close()
        end)

    it("refuses bad stream arguments, and a closed stream raises", function()
        local h = core.http_new()
        assert.has_error(function() h:stream("PUT", base, nil, nil, 1) end)
        assert.has_error(function() h:stream("GET", base, nil, "headers", 1) end)
        assert.has_error(function() h:stream("GET", base, nil, nil, 0) end)
        assert.has_error(function() h:stream("GET", base, nil, nil, 86400) end)
        assert.has_error(function() h:stream("GET", base, nil, nil, 0 / 0) end)
        assert.has_error(function() h:stream("GET", base, nil, nil, 1, 0) end)
        assert.has_error(function() h:stream("GET", base, nil, nil, 1, 2 ^ 40) end)
        assert.has_error(function() h:stream("GET", base, nil, nil, 1, 100, 0) end)
        assert.has_error(function() h:stream("GET", base, nil, nil, 1, 100, 0 / 0) end)
        assert.has_error(function() h:stream("GET", base, nil, { ["A"] = "b\r\nEvil: 1" }, 1) end)
        assert.has_error(function() h:stream("GET", base, nil, { ["A: x"] = "b" }, 1) end)
        local s = assert(h:stream("GET", base .. "/echo", nil, nil, 5))
        assert.has_error(function() s:read_line(-1) end)
        assert.has_error(function() s:read_line(0 / 0) end)
        assert.is_true(s:close())
        assert.is_true(s:close())
        assert.equal("cmpxchg.Stream (closed)", tostring(s))
        assert.has_error(function() s:read_line(1) end, "attempt to use a closed stream")
        h:close()
        assert.has_error(function() h:stream("GET", base, nil, nil, 1) end)
    end)

    it("raises after close, closes idempotently, and is collected", function()
        local h = core.http_new()
        assert.is_true(h:close())
        assert.is_true(h:close())
        assert.equal("cmpxchg.Http (closed)", tostring(h))
        assert.has_error(function() h:request("GET", base, nil, nil, 1) end,
            "attempt to use a closed transport")
        local weak = setmetatable({}, { __mode = "v" })
        weak[1] = core.http_new()
        weak[1]:request("GET", base .. "/echo", nil, nil, 5)
        collectgarbage()
        collectgarbage()
        assert.is_nil(weak[1])
    end)
end)

describe("cmpxchg.core.http_new against a server that dies after reading a request", function()
    it("does not call a request unsent when libcurl's own resend of it was refused", function()
        -- libcurl sends a request again on a new connection when a reused one
        -- dies before answering; that new connection is refused here, but the
        -- server had read the first copy: the write may have been applied
        local server = assert(io.popen("exec env -u LD_PRELOAD node spec/support/http_test_server.js",
            "r"))
        local line = assert(server:read("*l"), "the test server did not start (is node installed?)")
        local port, pid = line:match("^(%d+) (%d+)$")
        local base = "http://127.0.0.1:" .. port
        local h = core.http_new()
        assert.equal(200, (h:request("GET", base .. "/echo", nil, nil, 5)))   -- kept alive
        local ok, err, code, unsent = h:request("POST", base .. "/vanish", "{}", nil, 5)
        os.execute("kill " .. pid .. " 2>/dev/null")
        server:close()
        assert.same({ nil, "connect", false }, { ok, code, unsent })
        assert.matches("^connect: POST .*/vanish", err)
        -- and a request to it now is refused before anything is sent
        ok, err, code, unsent = core.http_new():request("POST", base .. "/echo", "{}", nil, 5)
        assert.same({ nil, "connect", true }, { ok, code, unsent }, err)
        h:close()
    end)
end)
