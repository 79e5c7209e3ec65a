-- The hostile-server suite through cosockets: the cases of hostile_spec.lua
-- (spec/support/hostile_cases.lua), each run by a handler of the test nginx
-- (spec/support/nginx/app.lua's hostile, started by scripts/nginx-test-server)
-- against the misbehaving servers of spec/support/hostile_server.js. Each case
-- must return its documented error within a bounded time, grow the worker's
-- resident memory by a bounded amount (and never past WORKER_MB), and leave
-- the worker alive (nothing in error.log says a worker died).
local cjson = require "cjson"
local core = require "cmpxchg.core"
local cases = require "spec.support.hostile_cases"
local harness = require "spec.support.hostile_harness"
local helpers = require "spec.helpers"
local hostile_run = require "spec.support.hostile_run"

local sh = helpers.sh

local WORKER_MB = 1536          -- an nginx worker's resident size never goes past this

if os.getenv("CMPXCHG_SKIP_NGINX") == "1" then
    describe("a hostile server, through cosockets", function()
        pending("runs in the plain pass only (nginx loads the uninstrumented LuaJIT build)")
    end)
    return
end

local function escape(s)
    return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

--- error.log's size, and the lines since `from` that say a worker died.
local function log_size(prefix)
    local f = io.open(prefix .. "/logs/error.log")
    if not f then return 0 end
    local size = f:seek("end")
    f:close()
    return size
end

local function deaths(prefix, from)
    local f = io.open(prefix .. "/logs/error.log")
    if not f then return {} end
    f:seek("set", from)
    local bad = {}
    for line in f:lines() do
        if line:find("%[alert%]") or line:find("%[emerg%]") or line:find("exited on signal")
                or line:find("lua entry thread aborted", 1, true) then
            bad[#bad + 1] = line
        end
    end
    f:close()
    return bad
end

describe("a hostile server, through cosockets", function()
    local server, base, prefix, http

    setup(function()
        sh("scripts/nginx-test-server start")
        base = sh("scripts/nginx-test-server url")
        prefix = sh("scripts/nginx-test-server prefix")
        server = harness.start()
        http = core.http_new()
    end)

    teardown(function()
        if server then server.stop() end
        if http then http:close() end
    end)

    for _, case in ipairs(cases) do
        it(cases.name(case), function()
            -- nginx has no per-request CA: TLS cases run unverified there
            local spec = cases.target(case, server.ports, { verify = false })
            local trap = server.hits().trap or 0
            local from = log_size(prefix)
            local status, body = http:request("GET", base .. "/hostile?case="
                .. escape(cjson.encode(spec)), nil, nil, (case.seconds or 20) + 60)
            assert.same({}, deaths(prefix, from))
            assert.equal(200, status, body)
            local r = cjson.decode(body)
            local what = hostile_run.describe(r)
            assert.is_nil(r.raised, what)
            local want = cases.expected(case, "ngx")
            assert.is_true(want[r.ok and "ok" or r.code] == true, what)
            assert.is_true(r.elapsed < (case.seconds or 20), "not bounded in time: " .. what)
            assert.is_true(r.grew_mb < (case.mb or 100), "not bounded in memory: " .. what)
            -- what earlier cases left in the worker's heap is not counted above
            assert.is_true(r.peak_mb < WORKER_MB, "the worker grew past its cap: " .. what)
            if case.trap then
                assert.equal(trap, server.hits().trap or 0, "a request went to the trap: " .. what)
            end
        end)
    end
end)

-- The cosocket stream (an etcd watch's transport inside nginx) against a
-- streaming server that misbehaves (both in the test nginx:
-- spec/support/nginx/stream_app.lua): each ends with a clear error within
-- its bound, the worker's memory grows a bounded amount, no worker dies.
describe("a hostile streaming server, through the cosocket stream", function()
    local base, prefix, http

    setup(function()
        sh("scripts/nginx-test-server start")
        base = sh("scripts/nginx-test-server url")
        prefix = sh("scripts/nginx-test-server prefix")
        http = core.http_new()
    end)

    teardown(function()
        if http then http:close() end
    end)

    -- case, stream timeout, max_line, the read's own timeout, stage and code
    -- it must end with, what its message says, MB the worker may grow (a
    -- line is kept once, not copied once per piece read: 49 MB for 1 MB then),
    -- head_timeout (a watch's set-up is bounded by a request's timeout, not the
    -- watch's: the time bound is then this one)
    local STREAM_CASES = {
        { "long_line", 10, 65536, nil, "read", "http", "a line over 65536 bytes", 4 },
        { "long_line", 10, nil, nil, "read", "http", "a line over 1048576 bytes", 16 },
        { "endless_headers", 10, nil, nil, "open", "http", "headers are too large" },
        { "silent_headers", 2, nil, nil, "open", "timeout", "timed out" },
        { "trickle_head", 2, nil, nil, "open", "timeout", "timed out" },
        { "trickle", 2, nil, nil, "read", "timeout", "timeout" },
        { "trickle", 2, nil, 0.3, "read", "timeout", "timeout" },
        { "close_mid_line", 10, nil, nil, "read", "connect", "closed" },
        { "silent_headers", 60, nil, nil, "open", "timeout", "timed out", nil, 2 },
        { "trickle_head", 60, nil, nil, "open", "timeout", "timed out", nil, 2 },
    }

    for _, c in ipairs(STREAM_CASES) do
        local case, timeout, max_line, read_timeout, stage, code, says, mb, head_timeout =
            table.unpack(c, 1, 9)
        it(("%s (timeout %d s, max_line %s, reads %s, head within %s)"):format(case, timeout,
            tostring(max_line or "default"), tostring(read_timeout or "until the end"),
            tostring(head_timeout or "the timeout")), function()
            local from = log_size(prefix)
            local q = ("/stream/run?case=%s&timeout=%d"):format(case, timeout)
                .. (max_line and "&max_line=" .. max_line or "")
                .. (read_timeout and "&read_timeout=" .. read_timeout or "")
                .. (head_timeout and "&head_timeout=" .. head_timeout or "")
            local status, body = http:request("GET", base .. q, nil, nil, timeout + 60)
            assert.equal(200, status, body)
            local r = cjson.decode(body)
            assert.same({}, deaths(prefix, from))
            assert.equal(stage, r.stage, body)
            assert.equal(code, r.code, body)
            assert.truthy(r.err:find(says, 1, true), body)
            assert.is_true(r.elapsed < (head_timeout or timeout) + 5,
                "not bounded in time: " .. body)
            assert.is_true(r.grew_mb < (mb or 16), "not bounded in memory: " .. body)
            assert.is_true(r.peak_mb < WORKER_MB, "the worker grew past its cap: " .. body)
            if read_timeout then assert.is_true(r.short_timeouts > 0, body) end
        end)
    end
end)
