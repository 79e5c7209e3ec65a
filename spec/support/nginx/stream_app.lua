--- The cosocket stream (transport/ngx.lua's http:stream, an etcd watch's
-- transport inside nginx) against a misbehaving streaming server, both in
-- the test nginx: /stream/evil is the server (it writes raw bytes on the
-- request's own socket), /stream/run the client, which reports how the
-- stream ended, how long it took and how much the worker's resident memory
-- grew meanwhile. Driven by spec/integration/nginx_hostile_spec.lua.
local cjson = require "cjson"
local transport = require "cmpxchg.transport.ngx"

local M = {}

local CHUNKED = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    .. "Transfer-Encoding: chunked\r\n\r\n"

local function chunk(s)
    return ("%x\r\n%s\r\n"):format(#s, s)
end

-- each case writes on `send` (false once the client is gone) and returns;
-- every loop is bounded
local CASES = {
    -- a line that never ends: 16 KB chunks without a LF, 4 MB at most
    long_line = function(send)
        send(CHUNKED)
        local piece = chunk(('{"result":"' .. ("x"):rep(16384)):sub(1, 16384))
        for _ = 1, 256 do
            if not send(piece) then return end
        end
    end,
    -- header lines for ever (4 MB at most)
    endless_headers = function(send)
        send("HTTP/1.1 200 OK\r\n")
        for i = 1, 40000 do
            if not send(("X-Filler-%d: %s\r\n"):format(i, ("y"):rep(90))) then return end
        end
    end,
    -- headers begun, then silence
    silent_headers = function(send)
        send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        ngx.sleep(15)
    end,
    -- a byte every 20 ms of a line that never ends (15 s at most)
    trickle = function(send)
        send(CHUNKED)
        for _ = 1, 750 do
            if not send(chunk("x")) then return end
            ngx.sleep(0.02)
        end
    end,
    -- the head trickled, a byte every 20 ms
    trickle_head = function(send)
        local head = "HTTP/1.1 200 OK\r\n" .. ("X-Slow: " .. ("z"):rep(60) .. "\r\n"):rep(20)
        for i = 1, #head do
            if not send(head:sub(i, i)) then return end
            ngx.sleep(0.02)
        end
    end,
    -- a whole line, then half of one, and the connection closes mid-chunk
    close_mid_line = function(send)
        send(CHUNKED)
        send(chunk('{"result":{"created":true}}\n'))
        send(("%x\r\n"):format(100) .. '{"result":{"events":[')
    end,
}

function M.evil()
    local case = CASES[ngx.var.arg_case]
    ngx.req.read_body()
    local sock = assert(ngx.req.socket(true))
    case(function(s) return sock:send(s) ~= nil end)
    ngx.exit(444)               -- closes the connection, whatever it was in
end

local function status_kb(field)
    local f = io.open("/proc/self/status")
    if not f then return 0 end
    local text = f:read("*a")
    f:close()
    return tonumber(text:match(field .. ":%s*(%d+)")) or 0
end

--- /stream/run?case=&timeout=&max_line=&head_timeout=: one stream from /stream/evil, read
-- line by line until it ends: {stage, err, code, lines, elapsed, grew_mb, peak_mb}.
function M.run()
    local a = ngx.req.get_uri_args()
    collectgarbage()
    collectgarbage()
    local f = assert(io.open("/proc/self/clear_refs", "w"))
    f:write("5")
    f:close()
    local before = status_kb("VmRSS")
    ngx.update_time()
    local t0 = ngx.now()
    local http = transport.new({ connect_timeout = 2 })
    local url = ("http://127.0.0.1:%s/stream/evil?case=%s"):format(ngx.var.server_port, a.case)
    local r = { lines = 0 }
    local s, status, code = http:stream("POST", url, "{}", nil, tonumber(a.timeout),
        tonumber(a.max_line), tonumber(a.head_timeout))
    if not s then
        r.stage, r.err, r.code = "open", status, code
    else
        r.stage, r.status = "read", status
        for _ = 1, 10000 do
            local line, err, ecode = s:read_line(tonumber(a.read_timeout))
            if not line then
                r.err, r.code = err, ecode
                -- a read's own timeout leaves the stream usable: read on
                if not (ecode == "timeout" and err:find("no line yet", 1, true)) then break end
                r.short_timeouts = (r.short_timeouts or 0) + 1
            else
                r.lines = r.lines + 1
            end
        end
        s:close()
    end
    ngx.update_time()
    r.elapsed = ngx.now() - t0
    local peak = status_kb("VmHWM")
    r.grew_mb = (peak - before) / 1024
    r.peak_mb = peak / 1024
    ngx.say(cjson.encode(r))
end

return M
