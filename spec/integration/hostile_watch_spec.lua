-- Watch streams (csrc/stream.c, Etcd:watch) against the misbehaving servers
-- of spec/support/hostile_server.js: each case must end with a clear error
-- code within the stream's deadline (a generous bound: "bounded", not a
-- speed target) and with bounded memory (the process's peak resident size
-- stays within MEM_MB of where it began: the replies are of 512 MiB and
-- more, the bound of a line 64 KB).
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"
local harness = require "spec.support.hostile_harness"

local TIMEOUT = 3           -- seconds: the stream's deadline
local BOUND = 30            -- seconds: what a case may take at most, deadline included
local MEM_MB = 64

local function peak_mb()
    local f = assert(io.open("/proc/self/status"))
    local text = f:read("*a")
    f:close()
    return tonumber(text:match("VmHWM:%s*(%d+)")) / 1024
end

local WATCH = '{"create_request":{"key":"aw==","start_revision":"5"}}'

describe("a watch stream against a hostile server", function()
    local server, http, base

    setup(function()
        server = harness.start()
        http = core.http_new()
        collectgarbage("collect")
        base = peak_mb()
    end)

    teardown(function()
        http:close()
        server.stop()
    end)

    local function url(case)
        return ("http://127.0.0.1:%d/v3/watch"):format(assert(server.ports[case], case))
    end

    --- Runs `fn`, then checks its time and the memory peak.
    local function bounded(fn)
        local started = core.monotime()
        fn()
        local took = core.monotime() - started
        assert.is_true(took < BOUND, ("took %.1f s"):format(took))
        assert.is_true(peak_mb() - base < MEM_MB, ("the peak grew by %.0f MB")
            :format(peak_mb() - base))
    end

    -- the stream's head never completes: http:stream fails
    for _, c in ipairs({
        { "header_flood", "http" },         -- headers that never end, fast
        { "trickle_headers", "timeout" },   -- headers that never end, slowly
        { "stall", "timeout" },             -- nothing at all
        { "garbage", "connect" },           -- not HTTP
    }) do
        it(("%s: http:stream ends with %q"):format(c[1], c[2]), function()
            bounded(function()
                local s, err, code = http:stream("POST", url(c[1]), WATCH, nil, TIMEOUT, 65536)
                assert.is_nil(s)
                assert.equal(c[2], code, err)
                assert.is_string(err)
            end)
        end)
    end

    -- the head is in, the body goes wrong: stream:read_line fails
    for _, c in ipairs({
        { "huge_close", "http" },           -- a line longer than the bound
        { "watch_long_line", "http" },      -- the same after a good first line
        { "trickle_chunked", "timeout" },   -- bytes trickle forever, no line ends
        { "watch_trickle", "timeout" },
        { "truncated_chunked", "connect" }, -- closed in the middle of a chunk
    }) do
        it(("%s: read_line ends with %q"):format(c[1], c[2]), function()
            bounded(function()
                local s, status = assert(http:stream("POST", url(c[1]), WATCH, nil, TIMEOUT,
                    65536))
                assert.equal(200, status)
                local line, err, code
                for _ = 1, 3 do     -- at most the good first line, then the failure
                    line, err, code = s:read_line()
                    if not line then break end
                end
                assert.is_nil(line)
                assert.equal(c[2], code, err)
                s:close()
            end)
        end)
    end

    it("watch_cut: the last bytes of a reply closed mid-line come back as a line, then "
        .. "'closed'", function()
        bounded(function()
            local s = assert(http:stream("POST", url("watch_cut"), WATCH, nil, TIMEOUT))
            assert.truthy(s:read_line():find('"created":true', 1, true))
            assert.truthy(s:read_line():find('"events"', 1, true))
            local line, _, code = s:read_line()
            assert.is_nil(line)
            assert.equal("closed", code)
            s:close()
        end)
    end)

    it("a status that is not 200 comes back with the stream, its body readable", function()
        bounded(function()
            local s, status = assert(http:stream("POST", url("watch_status"), WATCH, nil, TIMEOUT))
            assert.equal(503, status)
            assert.truthy(s:read_line():find("no leader", 1, true))
            s:close()
        end)
    end)

    it("a server that answers nothing holds a watch's set-up for a request's timeout, not "
        .. "the whole wait", function()
        for _, case in ipairs({ "watch_stall", "trickle_body" }) do    -- no head; no line
            local st = assert(cmpxchg.open(("etcd://127.0.0.1:%d"):format(server.ports[case]),
                { timeout = 1 }))
            local started = core.monotime()
            local w, err, code = st.backend:watch({ { key = "k", start = 5 } }, 60)
            local took = core.monotime() - started
            assert.is_nil(w)
            assert.equal("timeout", code, err)
            -- 1 s asked, 60 s the watch's: "within a request's timeout", generously
            assert.is_true(took < 20, ("%s: the set-up took %.1f s"):format(case, took))
            st:close()
        end
    end)

    it("lines that are not events do not stretch a read of the watch", function()
        bounded(function()
            local st = assert(cmpxchg.open(("etcd://127.0.0.1:%d"):format(
                server.ports.watch_progress), { timeout = 2 }))
            local w = assert(st.backend:watch({ { key = "k", start = 5 } }, 60))
            -- a read of 1 s ends as one, "timeout", the watch still on (not at its end)
            local evs, err, code = w:next(1)
            assert.is_nil(evs)
            assert.equal("timeout", code, err)
            w:close()
            st:close()
        end)
    end)

    -- through the store: Etcd:watch and Watch:next turn each into an error code
    for _, c in ipairs({
        { "watch_status", "setup", "http" },
        { "malformed_json", "setup", "decode" },
        { "trickle_body", "setup", "timeout" },  -- never says the watch is set up
        { "watch_cut", "next", "decode" },
        { "watch_long_line", "next", "http" },
        { "watch_trickle", "next", "timeout" },
    }) do
        it(("%s: a store's watch ends with %q"):format(c[1], c[3]), function()
            bounded(function()
                local st = assert(cmpxchg.open(("etcd://127.0.0.1:%d"):format(server.ports[c[1]]),
                    { timeout = 2 }))
                local w, err, code = st.backend:watch({ { key = "k", start = 5 } }, TIMEOUT)
                if c[2] == "setup" then
                    assert.is_nil(w)
                    assert.equal(c[3], code, err)
                else
                    assert(w, err)
                    local evs
                    -- reads of 1 s: "timeout" until the watch's own end, then over
                    for _ = 1, 2 * TIMEOUT + 4 do
                        evs, err, code = w:next(1)
                        if evs or code ~= "timeout" then break end
                    end
                    assert.is_nil(evs)
                    if c[3] == "timeout" then
                        assert.equal("closed", code, err)      -- its time ran out
                    else
                        assert.equal(c[3], code, err)
                    end
                    w:close()
                end
                st:close()
            end)
        end)
    end
end)
