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
-- Nothing a server does makes a request last longer than its timeout or
-- hold more than the bounds of csrc/http.c (256 MB of body, 64 KB of head
-- lines), checked while reading: see "Reading a reply" below. URLs with
-- control characters, spaces or user info are refused, never written into a
-- request line.
--
-- Hostnames are resolved by nginx's `resolver` directive, which never reads
-- /etc/hosts: "localhost" is mapped to 127.0.0.1 here; use IP addresses or
-- configure a resolver for other names.
local check = require "cmpxchg.check"
local runtime = require "cmpxchg.runtime"

local ngx = rawget(_G, "ngx")

-- the bounds of csrc/http.c, applied while reading: a reply that goes past
-- one is cut off there, whatever it announced
local MAX_BODY = 256 * 1024 * 1024      -- bytes of body (after chunked decoding)
local MAX_HEADERS = 64 * 1024           -- bytes of status lines, headers, interim replies, trailers
local MAX_CHUNK_LINE = 1024             -- bytes of one chunk-size line (size and extensions)
local READ_SIZE = 65536                 -- at most this much per receiveany
local SEND_SIZE = 65536                 -- a request is sent in pieces of this size
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

--- scheme, host, port, path of an http(s) URL; nil when it is not one. URLs
-- come from topologies too: one with a control character or a space (a line
-- break would end the request line), user info, an odd host or a port out of
-- range is refused, as libcurl refuses it.
local function parse_url(url)
    if url:find("[%z\1-\32\127]") then return nil end
    local scheme, rest = url:match("^(%a+)://(.*)$")
    scheme = scheme and scheme:lower()
    if scheme ~= "http" and scheme ~= "https" then return nil end
    local authority, path = rest:match("^([^/?#]*)(.*)$")
    if path == "" then path = "/" end
    local host, port = authority:match("^%[([%x:%.]+)%]:?(%d*)$")      -- [IPv6]:port
    if not host then host, port = authority:match("^([%w%.%-_]+):?(%d*)$") end
    if not host then return nil end
    local number = tonumber(port)
    if port == "" then
        number = scheme == "https" and 443 or 80
    elseif #port > 5 or number < 1 or number > 65535 then
        return nil
    end
    return scheme, host, number, path
end

--- `url` as messages show it: the password of a user:password@ masked (messages
-- end up in logs), control characters written as \ddd.
local shown = check.shown_url

local function fail(code, method, url, detail)
    return nil, ("%s: %s %s: %s"):format(code, method, shown(url), detail), code
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

--- Milliseconds left before `deadline` (at least 1: nginx's timers count in them).
local function left_ms(deadline)
    return math.max(1, math.floor((deadline - runtime.monotime()) * 1000))
end

--[[ Reading a reply. nginx's read timeout counts from the last byte received,
so a receive(n) or receive("*l") against a server that trickles a byte now
and then never ends. Every read here is one receiveany, which returns
whatever has arrived, with the read timeout set to what is left before the
request's deadline: the whole reply, however it trickles, ends by then.
Bytes read ahead wait in the reader's buffer. ]]

--- A reader of one reply on `sock`, to end by `deadline`.
local function reader(sock, deadline)
    return { sock = sock, deadline = deadline, buf = "", pos = 1, head = 0 }
end

--- Reads more into r.buf: true | nil, err ("timeout", "closed", ...).
local function fill(r)
    if runtime.monotime() >= r.deadline then return nil, "timeout" end
    local ms = left_ms(r.deadline)
    r.sock:settimeouts(ms, ms, ms)
    local data, err = r.sock:receiveany(READ_SIZE)
    if not data then return nil, err end
    r.buf = r.pos > #r.buf and data or r.buf:sub(r.pos) .. data
    r.pos = 1
    return true
end

--- One line (without its CR LF) of at most `max` bytes: line | nil, err,
-- what ("large" when it is longer).
local function read_line(r, max)
    local from = r.pos
    while true do
        local lf = r.buf:find("\n", from, true)
        if lf then
            if lf - r.pos > max then return nil, "line too long", "large" end
            local line = r.buf:sub(r.pos, lf - 1)
            r.pos = lf + 1
            return (line:gsub("\r$", ""))
        end
        if #r.buf - r.pos + 1 > max then return nil, "line too long", "large" end
        from = #r.buf - r.pos + 2               -- fill moves the unread part to 1
        local ok, err = fill(r)
        if not ok then return nil, err, "read" end
    end
end

--- A line of the reply's head (status, header, trailer): every one counts
-- towards MAX_HEADERS.
local function head_line(r)
    local line, err, what = read_line(r, MAX_HEADERS - r.head)
    if not line then
        if what == "large" then return nil, "reply headers are too large", "large" end
        return nil, err, what
    end
    r.head = r.head + #line + 2
    return line
end

--- Adds `s` to the body `body`: pieces are joined into runs of READ_SIZE, so
-- a body of many tiny chunks takes no more memory than one of big ones.
local function add(body, s)
    local run = body.run
    run[#run + 1] = s
    body.run_size = body.run_size + #s
    if body.run_size >= READ_SIZE then
        body[#body + 1] = table.concat(run)
        body.run, body.run_size = {}, 0
    end
end

--- Reads `n` bytes into `body`: true | nil, err.
local function read_bytes(r, n, body)
    while n > 0 do
        if r.pos > #r.buf then
            local ok, err = fill(r)
            if not ok then return nil, err end
        end
        local take = math.min(n, #r.buf - r.pos + 1)
        add(body, (r.pos == 1 and take == #r.buf) and r.buf or r.buf:sub(r.pos, r.pos + take - 1))
        r.pos = r.pos + take
        n = n - take
    end
    return true
end

local function body_text(body)
    body[#body + 1] = table.concat(body.run)
    return table.concat(body)
end

--- The size line of a chunk (after the last one, 0, its trailer read too):
-- n | nil, err, what. Read by replies and streams alike.
local function chunk_size(r)
    local line, err, what = read_line(r, MAX_CHUNK_LINE)
    if not line then
        if what == "large" then return nil, "malformed chunk size", "bad" end
        return nil, err, what
    end
    local hex = line:match("^%s*(%x+)%s*$") or line:match("^%s*(%x+)%s*;")
    local n = hex and tonumber(hex, 16)
    if not n then return nil, "malformed chunk size: " .. line:sub(1, 40), "bad" end
    if n == 0 then
        repeat              -- trailer fields, up to the empty line
            line, err, what = head_line(r)
            if not line then return nil, err, what end
        until line == ""
        return 0
    end
    if #hex > 8 then return nil, "reply is too large", "large" end
    return n
end

--- The CR LF after a chunk's data: true | nil, err, what.
local function chunk_end(r)
    local line, err, what = read_line(r, 1)
    if line == "" then return true end
    if line or what == "large" then return nil, "malformed chunk end", "bad" end
    return nil, err, what
end

--- The body of a chunked reply: true | nil, err, what.
local function read_chunked(r, body)
    local size = 0
    while true do
        local n, err, what = chunk_size(r)
        if not n then return nil, err, what end
        if n == 0 then return true end
        size = size + n
        if size > MAX_BODY then return nil, "reply is too large", "large" end
        local ok
        ok, err = read_bytes(r, n, body)
        if not ok then return nil, err, "read" end
        ok, err, what = chunk_end(r)
        if not ok then return nil, err, what end
    end
end

--- The body of a reply that ends when the server closes: true | nil, err, what.
local function read_to_close(r, body)
    local size = #r.buf - r.pos + 1
    if size > 0 then add(body, r.buf:sub(r.pos)) end
    r.buf, r.pos = "", 1
    while true do
        if size > MAX_BODY then return nil, "reply is too large", "large" end
        local ok, err = fill(r)
        if not ok then
            if err == "closed" then return true end
            return nil, err, "read"
        end
        size = size + #r.buf
        add(body, r.buf)
        r.buf = ""
    end
end

--- The head of a reply: status, version, headers | nil, err, what.
local function read_head(r)
    local status, version, headers
    repeat                      -- skips 1xx interim replies
        local line, err, what = head_line(r)
        if not line then
            local first = status == nil and r.head == 0 and #r.buf == 0 and what == "read"
            return nil, err, first and "first" or what
        end
        local v, code = line:match("^HTTP/(%d%.%d) (%d%d%d)")
        if not v then return nil, "malformed status line: " .. line:sub(1, 100), "bad" end
        version, status = v, tonumber(code)
        headers = {}
        while true do
            line, err, what = head_line(r)
            if not line then return nil, err, what end
            if line == "" then break end
            local name, value = line:match("^([^:]+):[ \t]*(.-)[ \t]*$")
            if name then headers[name:lower()] = value end
        end
    until status >= 200 or status == 101
    return status, version, headers
end

--- Reads one reply: status, body, headers, keep (the connection may be
-- pooled) | nil, err, what ("timeout", "closed" before any byte, "large",
-- "bad", other).
local function read_reply(sock, deadline)
    local r = reader(sock, deadline)
    local status, version, headers = read_head(r)
    if not status then return nil, version, headers end
    local connection = (headers.connection or ""):lower()
    local keep = not connection:find("close", 1, true) and
        (version ~= "1.0" or connection:find("keep-alive", 1, true) ~= nil)
    local te = (headers["transfer-encoding"] or ""):lower()
    local body = { run = {}, run_size = 0 }
    local ok, err, what
    if status == 204 or status == 304 or status < 200 then
        ok = true               -- no body
    elseif te ~= "" and te ~= "identity" then
        if not te:find("chunked", 1, true) then
            return nil, "unsupported transfer-encoding " .. te, "bad"
        end
        ok, err, what = read_chunked(r, body)
    elseif headers["content-length"] then
        local n = headers["content-length"]:match("^%d+$") and tonumber(headers["content-length"])
        if not n then return nil, "malformed content-length", "bad" end
        if n > MAX_BODY then return nil, "reply is too large", "large" end
        ok, err = read_bytes(r, n, body)
        what = "read"
    else                        -- the body ends when the server closes
        ok, err, what = read_to_close(r, body)
        keep = false
    end
    if not ok then return nil, err, what end
    -- bytes past the reply: the connection is out of step, never pooled
    if r.pos <= #r.buf then keep = false end
    return status, body_text(body), headers, keep
end

--- Sends `request`, in pieces when it is long, each with what is left
-- before `deadline` as its timeout (nginx's send timeout also counts from the
-- last progress, so a server that reads slowly cannot stretch one send past
-- the deadline by more than a piece): true | nil, err.
local function send_all(sock, request, deadline)
    for i = 1, #request, SEND_SIZE do
        if runtime.monotime() >= deadline then return nil, "timeout" end
        local ms = left_ms(deadline)
        sock:settimeouts(ms, ms, ms)
        local ok, err = sock:send(#request <= SEND_SIZE and request
            or request:sub(i, i + SEND_SIZE - 1))
        if not ok then return nil, err end
    end
    return true
end

--- The TLS handshake on a new connection: true | nil, err.
-- Asked for no session (sslhandshake(false, ...)), lua-nginx-module 0.10.23
-- with lua-resty-core 0.1.25 (Debian 12's) return true from a handshake
-- that completed at once without looking at its verification: a server
-- that failed it was reported verified (nginx had closed its connection,
-- so nothing was sent), and the request failed as a dropped connection,
-- "send failed: closed", code connect (lua-nginx-module#2506,
-- lua-resty-core#532; 7 of 40 verifying handshakes here, on
-- loopback). Asked for the session, they read the outcome; that
-- lua-resty-core then raises from an assert where it should return the
-- error, so the raise is the failed verification. The session is dropped
-- (connections are pooled instead).
local function handshake(sock, host, verify)
    if not verify then return sock:sslhandshake(false, host, false) end
    local ran, session, err = pcall(sock.sslhandshake, sock, nil, host, true)
    if not ran then
        return nil, "the server's certificate or name did not verify (" .. tostring(session)
            .. ")"
    end
    if session == nil and err ~= nil then return nil, err end
    return true
end

--- A connection for one exchange with `host`:`port`, from the pool named
-- after the server and TLS settings (plus `pool_tag`: a stream never gets
-- a pooled connection, as it never gives one back): sock, reused | nil,
-- err, code, retry (false), unsent.
function Http:open_connection(method, url, host, port, scheme, deadline, pool_tag)
    local sock, err = ngx.socket.tcp()
    if not sock then return fail("connect", method, url, err) end
    local tls = scheme == "https"
    local pool = ("cmpxchg/%s:%d/%s%s"):format(host, port, tls and ("tls/%s/%s/%s"):format(
        host, self.verify and "verify" or "noverify", self.cert or "-") or "plain",
        pool_tag or "")
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
        ok, err = handshake(sock, host, self.verify)
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
    return sock, reused
end

--- One exchange on one connection: status, body, headers | nil, err, code,
-- retry (true when a pooled connection turned out dead before answering:
-- a read may be sent again on a fresh one, as libcurl does), unsent
-- (true when the connection was refused: nothing reached the server).
function Http:exchange(method, url, host, port, scheme, request, deadline)
    local tls = scheme == "https"
    local sock, reused, code, retry, unsent = self:open_connection(method, url, host, port,
        scheme, deadline)
    if not sock then return nil, reused, code, retry, unsent end
    local sent, err = send_all(sock, request, deadline)
    if not sent then
        sock:close()
        if err == "timeout" then return fail("timeout", method, url, "send timed out") end
        return nil, ("connect: %s %s: send failed: %s"):format(method, shown(url),
            tostring(err)), "connect", reused
    end
    local status, body, headers, keep = read_reply(sock, deadline)
    if not status then
        sock:close()
        local what = headers
        if body == "timeout" then return fail("timeout", method, url, "read timed out") end
        if what == "large" then return fail("http", method, url, body) end
        if what == "bad" then return fail("connect", method, url, "bad reply: " .. body) end
        local detail = tostring(body)
        if tls and self.refuses_in_tls and
                (detail:find("alert", 1, true) or detail:find("SSL", 1, true)) then
            return fail("tls", method, url, detail)
        end
        return nil, ("connect: %s %s: read failed: %s"):format(method, shown(url), detail),
            "connect", reused and what == "first"
    end
    if keep then
        sock:setkeepalive(KEEPALIVE_MS, POOL_SIZE)
    else
        sock:close()
    end
    return status, body, headers
end

--- Where a request or a stream goes: scheme, host, port, path | nil, err,
-- code (not an http(s) URL; a CA file asked for, which only nginx's
-- lua_ssl_trusted_certificate can give a cosocket).
function Http:target(method, url)
    local scheme, host, port, path = parse_url(url)
    if not scheme then return fail("connect", method, url, "not an http(s) URL") end
    if scheme == "https" and self.ca then
        return fail("tls", method, url, "tls.ca is not available inside nginx: "
            .. "name the CA file with the lua_ssl_trusted_certificate directive instead")
    end
    return scheme, host, port, path
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
    runtime.check_yield(("a request to %s"):format(shown(url)))
    local scheme, host, port, path = self:target(method, url)
    if not scheme then return nil, host, port end
    local request = request_text(method, host, port, scheme == "https" and 443 or 80, path,
        body, headers)
    local deadline = runtime.monotime() + timeout
    local status, rbody, rheaders, retry, unsent = self:exchange(method, url, host, port,
        scheme, request, deadline)
    if status == nil and retry and method == "GET" and runtime.monotime() < deadline then
        -- the pooled connection had been closed by the server: a read once
        -- more on a new one (the first copy may have been read: never
        -- "unsent" then). Never a write: its first copy may have been read
        -- and applied, and the second's answer would be taken for the only
        -- one (an etcd txn applied, then "compare failed"); the backend
        -- settles a write whose outcome is unknown.
        status, rbody, rheaders = self:exchange(method, url, host, port, scheme, request,
            deadline)
        unsent = false
    end
    if status == nil then return nil, rbody, rheaders, unsent == true end
    return status, rbody, rheaders
end

--[[ Streams: a reply read line by line while it arrives (an etcd watch),
on a connection of its own that is closed at the end, never pooled. The
whole exchange ends by the deadline given to http:stream, whatever the
server does; a line longer than max_line ends it ("http", too large). ]]

local Stream = {}
Stream.__index = Stream

local DEFAULT_LINE = 1024 * 1024

--- The next body bytes of the stream, at most READ_SIZE: data | nil, err,
-- what ("timeout" with r.deadline passed, "closed" at the body's end, else
-- the transfer failed). The body's framing state survives a timeout.
function Stream:body_bytes()
    local r = self.r
    if self.mode == "chunked" then
        if self.need_crlf then
            local ok, err, what = chunk_end(r)
            if not ok then return nil, err, what end
            self.need_crlf = false
        end
        if self.chunk_left == 0 then
            local n, err, what = chunk_size(r)
            if not n then return nil, err, what end
            if n == 0 then return nil, "the reply ended", "closed" end
            self.chunk_left = n
        end
        if r.pos > #r.buf then
            local ok, err = fill(r)
            if not ok then return nil, err, "read" end
        end
        local take = math.min(self.chunk_left, #r.buf - r.pos + 1)
        local data = r.buf:sub(r.pos, r.pos + take - 1)
        r.pos = r.pos + take
        self.chunk_left = self.chunk_left - take
        self.need_crlf = self.chunk_left == 0
        return data
    end
    if self.mode == "length" and self.length_left == 0 then
        return nil, "the reply ended", "closed"
    end
    if r.pos > #r.buf then
        local ok, err = fill(r)
        if not ok then
            if err == "closed" and self.mode == "close" then
                return nil, "the reply ended", "closed"
            end
            return nil, err, "read"
        end
    end
    local take = #r.buf - r.pos + 1
    if self.mode == "length" then take = math.min(take, self.length_left) end
    local data = r.buf:sub(r.pos, r.pos + take - 1)
    r.pos = r.pos + take
    if self.mode == "length" then self.length_left = self.length_left - take end
    return data
end

--- stream:read_line([timeout]) -> line | nil, err, code: as the libcurl
-- transport's (csrc/stream.c): "timeout" when no whole line came within
-- `timeout` seconds (the stream stays usable), "closed" once the reply ended,
-- else how the exchange failed ("timeout" at its deadline, "connect", "http").
function Stream:read_line(timeout)
    if self.r == nil then check.raise("attempt to use a closed stream") end
    local deadline = self.deadline
    local until_ = math.min(runtime.monotime() + (timeout or 86400), deadline)
    while true do
        local pending, pos = self.pending, self.pos
        local lf = pending:find("\n", pos, true)
        if lf then
            if self.size + (lf - pos) > self.max_line then break end
            local line = pending:sub(pos, lf - 1)
            self.pos = lf + 1
            if self.size > 0 then
                local parts = self.parts
                parts[#parts + 1] = line
                line = table.concat(parts)
                self.parts, self.size = {}, 0
            end
            return (line:gsub("\r$", ""))
        end
        -- the start of a line kept in pieces, joined once whole: a long line
        -- read in small pieces is copied once, not once per piece
        if pos <= #pending then
            self.parts[#self.parts + 1] = pos == 1 and pending or pending:sub(pos)
            self.size = self.size + #pending - pos + 1
        end
        self.pending, self.pos = "", 1
        if self.size > self.max_line then break end
        if self.failed then return nil, self.failed[1], self.failed[2] end
        self.r.deadline = until_
        local data, err, what = self:body_bytes()
        if data then
            self.pending = data
        elseif what == "closed" then
            if self.size > 0 then           -- the last line, without its LF
                local line = table.concat(self.parts)
                self.parts, self.size = {}, 0
                return line
            end
            return nil, "closed: stream: the reply ended", "closed"
        elseif err == "timeout" and until_ < deadline then
            return nil, "timeout: stream: no line yet", "timeout"
        else
            local code = err == "timeout" and "timeout" or what == "large" and "http"
                or "connect"
            self.failed = { ("%s: stream: %s"):format(code, tostring(err)), code }
            self:close()
            return nil, self.failed[1], code
        end
    end
    self.parts, self.size = {}, 0
    self:close()
    return nil, ("http: stream: the reply is too large (a line over %d bytes)")
        :format(self.max_line), "http"
end

--- Closes the stream's connection (idempotent): true.
function Stream:close()
    local r = self.r
    if r then
        self.r = nil
        r.sock:close()
    end
    return true
end

--- http:stream(method, url, body, headers, timeout [, max_line [, head_timeout]])
-- -> stream, status, headers | nil, err, code, unsent: as the libcurl
-- transport's (head_timeout bounds the connection, the request and the reply's
-- head: a member that takes the connection and says nothing ends it early).
function Http:stream(method, url, body, headers, timeout, max_line, head_timeout)
    if method ~= "GET" and method ~= "POST" then
        check.argerror(2, "stream", "method must be GET or POST")
    end
    check.type(url, "string", 3, "stream")
    if body ~= nil then check.type(body, "string", 4, "stream") end
    if headers ~= nil then check.type(headers, "table", 5, "stream") end
    if type(timeout) ~= "number" or not (timeout > 0 and timeout < 86400) then
        check.argerror(6, "stream", "timeout out of range")
    end
    max_line = max_line or DEFAULT_LINE
    if type(max_line) ~= "number" or not (max_line >= 1 and max_line <= MAX_BODY) then
        check.argerror(7, "stream", "max_line out of range")
    end
    head_timeout = head_timeout or timeout
    if type(head_timeout) ~= "number" or not (head_timeout > 0 and head_timeout < 86400) then
        check.argerror(8, "stream", "head_timeout out of range")
    end
    runtime.check_yield(("a stream from %s"):format(shown(url)))
    local scheme, host, port, path = self:target(method, url)
    if not scheme then return nil, host, port end
    local request = request_text(method, host, port, scheme == "https" and 443 or 80, path,
        body, headers)
    local deadline = runtime.monotime() + timeout
    local head_deadline = math.min(deadline, runtime.monotime() + head_timeout)
    local sock, err, code, _, unsent = self:open_connection(method, url, host, port, scheme,
        head_deadline, "/stream")
    if not sock then return nil, err, code, unsent end
    local ok
    ok, err = send_all(sock, request, head_deadline)
    if not ok then
        sock:close()
        if err == "timeout" then return fail("timeout", method, url, "send timed out") end
        return fail("connect", method, url, "send failed: " .. tostring(err))
    end
    local r = reader(sock, head_deadline)
    local status, what, rheaders
    status, err, what = read_head(r)
    r.deadline = deadline
    if not status then
        sock:close()
        if err == "timeout" then return fail("timeout", method, url, "read timed out") end
        if what == "large" then return fail("http", method, url, err) end
        return fail("connect", method, url, "read failed: " .. tostring(err))
    end
    rheaders = what
    local te = (rheaders["transfer-encoding"] or ""):lower()
    local s = setmetatable({ r = r, deadline = deadline, max_line = max_line, pending = "",
                             pos = 1, parts = {}, size = 0, chunk_left = 0 }, Stream)
    if status == 204 or status == 304 then
        s.mode, s.length_left = "length", 0
    elseif te ~= "" and te ~= "identity" then
        if not te:find("chunked", 1, true) then
            sock:close()
            return fail("connect", method, url, "bad reply: unsupported transfer-encoding " .. te)
        end
        s.mode = "chunked"
    elseif rheaders["content-length"] then
        local n = rheaders["content-length"]:match("^%d+$") and
            tonumber(rheaders["content-length"])
        if not n then
            sock:close()
            return fail("connect", method, url, "bad reply: malformed content-length")
        end
        s.mode, s.length_left = "length", n
    else
        s.mode = "close"
    end
    return s, status, rheaders
end

--- Nothing to free: connections live in the worker's pool. Returns true.
function Http.close()
    return true
end

return transport
