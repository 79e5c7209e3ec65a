--- The nginx HTTP transport: a small HTTP/1.1 client on ngx.socket.tcp
-- (lua-nginx-module cosockets), the same interface as transport/curl.lua:
--   new(opts) -> an object with
--     request(method, url, body, headers, timeout) -> status, body, headers
--                                                   | nil, err, code
--     close()
-- opts: connect_timeout (seconds), tls = {cert =, key =, verify =} (tls.ca
-- is not available here: see below); reply_headers is not needed here (the
-- reply is parsed in Lua anyway) and every header is reported;
-- refuses_in_tls = false: the server never refuses a client certificate
-- inside TLS (RavenDB answers 403), so a TLS read error is a dropped
-- connection (`connect`), not a refusal (`tls`).
--
-- Every request takes a connection from the worker's keep-alive pool (or
-- opens one) and gives it back with setkeepalive, so one object serves any
-- number of requests, timers and concurrent coroutines of a worker: cosockets
-- belong to the request that made them and cannot be kept in the object.
-- The pool name holds host, port and the TLS settings (SNI name, verify,
-- client certificate), because a pooled TLS connection is reused without a
-- new handshake or check.
--
-- TLS: sslhandshake verifies the server's chain against nginx's
-- `lua_ssl_trusted_certificate` (and `lua_ssl_verify_depth`), and its DNS
-- name against the URL's host, unless tls.verify is false. lua-nginx-module
-- has no per-request CA, so tls.ca fails with a `tls` error naming the
-- directive. A client certificate (tls.cert + tls.key, PEM files) is sent
-- through tcpsock:setclientcert (lua-resty-core >= 0.1.23).
--
-- Hostnames are resolved by nginx's `resolver` directive, which never reads
-- /etc/hosts: "localhost" is mapped to 127.0.0.1 here; use IP addresses or
-- configure a resolver for other names.
local check = require "cmpxchg.check"
local runtime = require "cmpxchg.runtime"

local ngx = rawget(_G, "ngx")

local MAX_BODY = 256 * 1024 * 1024      -- as the curl transport
local KEEPALIVE_MS = 60000              -- idle connections leave the pool after this
local POOL_SIZE = 64                    -- idle connections kept per pool name
local METHODS = { GET = true, PUT = true, DELETE = true, POST = true }

local Http = {}
Http.__index = Http

local transport = {}

--- new([{connect_timeout =, tls =}]) -> transport object
function transport.new(opts)
    opts = opts or {}
    local connect_timeout = opts.connect_timeout or 5
    if type(connect_timeout) ~= "number" or not (connect_timeout > 0 and connect_timeout < 86400)
    then
        check.argerror(1, "new", "connect_timeout out of range")
    end
    local tls = opts.tls or {}
    return setmetatable({
        connect_timeout = connect_timeout,
        ca = tls.ca, cert = tls.cert, key = tls.key,
        verify = tls.verify ~= false,
        refuses_in_tls = opts.refuses_in_tls ~= false,
    }, Http)
end

--- scheme, host, port, path of an http(s) URL; nil when it is not one.
local function parse_url(url)
    local scheme, rest = url:match("^(%a+)://(.*)$")
    scheme = scheme and scheme:lower()
    if scheme ~= "http" and scheme ~= "https" then return nil end
    local authority, path = rest:match("^([^/?#]*)(.*)$")
    if path == "" then path = "/" end
    local host, port = authority:match("^%[(.+)%]:?(%d*)$")      -- [IPv6]:port
    if not host then host, port = authority:match("^([^:]+):?(%d*)$") end
    if not host then return nil end
    port = tonumber(port) or (scheme == "https" and 443 or 80)
    return scheme, host, port, path
end

local function fail(code, method, url, detail)
    return nil, ("%s: %s %s: %s"):format(code, method, url, detail), code
end

--- Reads the PEM client certificate and key once (small files) and parses
-- them for setclientcert.
function Http:client_cert()
    if self.cert_cdata then return self.cert_cdata, self.key_cdata end
    local function slurp(path)
        local f, err = io.open(path, "rb")
        if not f then return nil, err end
        local text = f:read("*a")
        f:close()
        return text
    end
    local cert_pem, err = slurp(self.cert)
    if not cert_pem then return nil, "cannot read tls.cert: " .. tostring(err) end
    local key_pem
    key_pem, err = slurp(self.key or self.cert)
    if not key_pem then return nil, "cannot read tls.key: " .. tostring(err) end
    local ok, ssl = pcall(require, "ngx.ssl")
    if not ok then return nil, "client certificates need lua-resty-core's ngx.ssl: " .. ssl end
    local cert, key
    cert, err = ssl.parse_pem_cert(cert_pem)
    if not cert then return nil, "tls.cert is not a PEM certificate: " .. tostring(err) end
    key, err = ssl.parse_pem_priv_key(key_pem)
    if not key then return nil, "tls.key is not a PEM private key: " .. tostring(err) end
    self.cert_cdata, self.key_cdata = cert, key
    return cert, key
end

--- The request head and body as one string; raises on a header that is not
-- a pair of strings or would inject a line (as the curl transport does).
local function request_text(method, host, port, default_port, path, body, headers)
    local lines = {
        ("%s %s HTTP/1.1"):format(method, path),
        "Host: " .. (host:find(":", 1, true) and "[" .. host .. "]" or host)
            .. (port ~= default_port and ":" .. port or ""),
        "User-Agent: lua-cmpxchg",
    }
    if body or method == "PUT" or method == "POST" then
        lines[#lines + 1] = "Content-Length: " .. #(body or "")
    end
    for name, value in pairs(headers or {}) do
        if type(name) ~= "string" or type(value) ~= "string" or name == "" or
                name:find("[\r\n: ]") or value:find("[\r\n]") or
                name:find("\0", 1, true) or value:find("\0", 1, true) then
            check.argerror(5, "request", ("bad header '%s'"):format(tostring(name)))
        end
        lines[#lines + 1] = name .. ": " .. value
    end
    lines[#lines + 1] = ""
    lines[#lines + 1] = body or ""
    return table.concat(lines, "\r\n")
end

--- Sets the socket's send and read timeouts to what is left before `deadline`.
local function left_ms(deadline)
    return math.max(1, math.floor((deadline - runtime.monotime()) * 1000))
end

--- Reads one reply: status, body, headers, keep (the connection may be
-- pooled) | nil, err, what ("timeout", "closed" before any byte, other).
local function read_reply(sock, deadline)
    local function settime()
        local ms = left_ms(deadline)
        sock:settimeouts(ms, ms, ms)
    end
    local status, version, headers
    repeat                      -- skips 1xx interim replies
        settime()
        local line, err = sock:receive("*l")
        if not line then return nil, err, status == nil and "first" or "read" end
        local v, code = line:match("^HTTP/(%d%.%d) (%d%d%d)")
        if not v then return nil, "malformed status line: " .. line:sub(1, 100), "bad" end
        version, status = v, tonumber(code)
        headers = {}
        while true do
            settime()
            line, err = sock:receive("*l")
            if not line then return nil, err, "read" end
            if line == "" then break end
            local name, value = line:match("^([^:]+):[ \t]*(.-)[ \t]*$")
            if name then headers[name:lower()] = value end
        end
    until status >= 200 or status == 101
    local connection = (headers.connection or ""):lower()
    local keep = not connection:find("close", 1, true) and
        (version ~= "1.0" or connection:find("keep-alive", 1, true) ~= nil)
    local te = (headers["transfer-encoding"] or ""):lower()
    local parts, size = {}, 0
    local no_body = status == 204 or status == 304 or (status >= 100 and status < 200)
    if no_body then
        parts[1] = ""
    elseif te ~= "" and te ~= "identity" then
        if not te:find("chunked", 1, true) then
            return nil, "unsupported transfer-encoding " .. te, "bad"
        end
        while true do
            settime()
            local line, err = sock:receive("*l")
            if not line then return nil, err, "read" end
            local hex = line:match("^%s*(%x+)")
            local n = hex and tonumber(hex, 16)
            if not n then return nil, "malformed chunk size: " .. line:sub(1, 40), "bad" end
            if n == 0 then
                repeat              -- trailer fields, up to the empty line
                    settime()
                    line, err = sock:receive("*l")
                    if not line then return nil, err, "read" end
                until line == ""
                break
            end
            size = size + n
            if size > MAX_BODY then return nil, "reply is too large", "large" end
            settime()
            local data
            data, err = sock:receive(n)
            if not data then return nil, err, "read" end
            parts[#parts + 1] = data
            settime()
            local crlf
            crlf, err = sock:receive(2)
            if not crlf then return nil, err, "read" end
        end
    elseif headers["content-length"] then
        local n = tonumber(headers["content-length"])
        if not n or n < 0 then return nil, "malformed content-length", "bad" end
        if n > MAX_BODY then return nil, "reply is too large", "large" end
        if n > 0 then
            settime()
            local data, err = sock:receive(n)
            if not data then return nil, err, "read" end
            parts[1] = data
        end
    else                        -- the body ends when the server closes
        settime()
        local data, err = sock:receive("*a")
        if not data then return nil, err, "read" end
        if #data > MAX_BODY then return nil, "reply is too large", "large" end
        parts[1] = data
        keep = false
    end
    return status, table.concat(parts), headers, keep
end

--- One exchange on one connection: status, body, headers | nil, err, code,
-- retry (true when a pooled connection turned out dead before answering:
-- the request may be sent again on a fresh one, as libcurl does), unsent
-- (true when the connection was refused: nothing reached the server).
function Http:exchange(method, url, host, port, scheme, request, deadline)
    local sock, err = ngx.socket.tcp()
    if not sock then return fail("connect", method, url, err) end
    local tls = scheme == "https"
    local pool = ("cmpxchg/%s:%d/%s"):format(host, port, tls and ("tls/%s/%s/%s"):format(
        host, self.verify and "verify" or "noverify", self.cert or "-") or "plain")
    local connect_ms = math.min(math.floor(self.connect_timeout * 1000), left_ms(deadline))
    sock:settimeouts(connect_ms, left_ms(deadline), left_ms(deadline))
    local ok
    ok, err = sock:connect(host == "localhost" and "127.0.0.1" or host, port, { pool = pool })
    if not ok then
        local code = err == "timeout" and "timeout" or "connect"
        local _, message = fail(code, method, url, "connect failed: " .. tostring(err))
        return nil, message, code, false, code == "connect"
    end
    local reused = (sock:getreusedtimes() or 0) > 0
    if tls and not reused then
        if self.cert then
            local cert, key = self:client_cert()
            if not cert then
                sock:close()
                return fail("tls", method, url, key)
            end
            ok, err = sock:setclientcert(cert, key)
            if not ok then
                sock:close()
                return fail("tls", method, url, "setclientcert: " .. tostring(err))
            end
        end
        ok, err = sock:sslhandshake(false, host, self.verify)
        if not ok then
            sock:close()
            if err == "timeout" then
                return fail("timeout", method, url, "TLS handshake timed out")
            end
            return fail("tls", method, url, "TLS handshake failed: " .. tostring(err)
                .. (self.verify and " (inside nginx the trusted CAs are the file named by "
                    .. "lua_ssl_trusted_certificate)" or ""))
        end
    end
    sock:settimeouts(connect_ms, left_ms(deadline), left_ms(deadline))
    local sent
    sent, err = sock:send(request)
    if not sent then
        sock:close()
        if err == "timeout" then return fail("timeout", method, url, "send timed out") end
        return nil, ("connect: %s %s: send failed: %s"):format(method, url, tostring(err)),
            "connect", reused
    end
    local status, body, headers, keep = read_reply(sock, deadline)
    if not status then
        sock:close()
        local what = headers
        if body == "timeout" then return fail("timeout", method, url, "read timed out") end
        if what == "large" then return fail("http", method, url, "reply is too large") end
        if what == "bad" then return fail("connect", method, url, "bad reply: " .. body) end
        local detail = tostring(body)
        if tls and self.refuses_in_tls and
                (detail:find("alert", 1, true) or detail:find("SSL", 1, true)) then
            return fail("tls", method, url, detail)
        end
        return nil, ("connect: %s %s: read failed: %s"):format(method, url, detail), "connect",
            reused and what == "first"
    end
    if keep then
        sock:setkeepalive(KEEPALIVE_MS, POOL_SIZE)
    else
        sock:close()
    end
    return status, body, headers
end

--- http:request(method, url, body, headers, timeout) -> status, body, headers
--                                                     | nil, err, code, unsent
-- `timeout` (seconds) bounds the whole exchange; code: connect, timeout, tls;
-- unsent: true when the request certainly never reached the server.
function Http:request(method, url, body, headers, timeout)
    if type(method) ~= "string" or not METHODS[method] then
        check.argerror(2, "request", "method must be GET, PUT, DELETE or POST")
    end
    check.type(url, "string", 3, "request")
    if body ~= nil then check.type(body, "string", 4, "request") end
    if headers ~= nil then check.type(headers, "table", 5, "request") end
    timeout = timeout or 30
    if type(timeout) ~= "number" or not (timeout > 0 and timeout < 86400) then
        check.argerror(6, "request", "timeout out of range")
    end
    runtime.check_yield(("a request to %s"):format(url))
    local scheme, host, port, path = parse_url(url)
    if not scheme then return fail("connect", method, url, "not an http(s) URL") end
    if scheme == "https" and self.ca then
        return fail("tls", method, url, "tls.ca is not available inside nginx: "
            .. "name the CA file with the lua_ssl_trusted_certificate directive instead")
    end
    local request = request_text(method, host, port, scheme == "https" and 443 or 80, path,
        body, headers)
    local deadline = runtime.monotime() + timeout
    local status, rbody, rheaders, retry, unsent = self:exchange(method, url, host, port,
        scheme, request, deadline)
    if status == nil and retry and runtime.monotime() < deadline then
        -- the pooled connection had been closed by the server: once more on a
        -- new one (the first copy may have been read: never "unsent" then)
        status, rbody, rheaders = self:exchange(method, url, host, port, scheme, request,
            deadline)
        unsent = false
    end
    if status == nil then return nil, rbody, rheaders, unsent == true end
    return status, rbody, rheaders
end

--- Nothing to free: connections live in the worker's pool. Returns true.
function Http.close()
    return true
end

return transport
