-- The hostile-server suite through libcurl (plain Lua): a misbehaving RavenDB
-- and etcd on loopback (spec/support/hostile_server.js) answer with huge,
-- endless, trickling, truncated and malformed replies, gzip bombs, wrong shapes
-- and indexes, redirects and foreign topologies. Each case runs in a child Lua
-- process (so its memory is its own) and must return its documented error,
-- within a bounded time and with bounded memory: spec/support/hostile_cases.lua.
-- The same cases run through cosockets in nginx_hostile_spec.lua.
local cjson = require "cjson"
local cases = require "spec.support.hostile_cases"
local harness = require "spec.support.hostile_harness"
local helpers = require "spec.helpers"
local hostile_run = require "spec.support.hostile_run"

describe("a hostile server, through libcurl", function()
    local server

    setup(function()
        server = harness.start()
    end)

    teardown(function()
        if server then server.stop() end
    end)

    for _, case in ipairs(cases) do
        it(cases.name(case), function()
            local spec = cases.target(case, server.ports, { ca = server.certs .. "/ca.crt" })
            local trap = server.hits().trap or 0
            -- a case that is not bounded would run forever: killed a minute past its bound
            local p = assert(helpers.popen(("timeout -s KILL %d %s 2>&1"):format(
                (case.seconds or 20) + 60, helpers.lua_command("spec/support/hostile_client.lua",
                    { cjson.encode(spec) }))))
            local out = p:read("*a")
            local _, _, code = helpers.pclose(p)
            assert.equal(0, code, "the client process died: " .. out)
            local r = cjson.decode(out:match("([^\n]+)\n*$"))
            local what = hostile_run.describe(r)
            assert.is_nil(r.raised, what)
            local want = cases.expected(case, "curl")
            assert.is_true(want[r.ok and "ok" or r.code] == true, what)
            assert.is_true(r.elapsed < (case.seconds or 20), "not bounded in time: " .. what)
            assert.is_true(r.grew_mb < (case.mb or 100), "not bounded in memory: " .. what)
            if case.kept and r.kept_mb then
                -- a handle gives back a big reply's buffer after its request
                assert.is_true(r.kept_mb < case.kept, "memory kept after the call: " .. what)
            end
            if case.trap then
                assert.equal(trap, server.hits().trap or 0, "a request went to the trap: " .. what)
            end
        end)
    end
end)
