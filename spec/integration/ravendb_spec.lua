-- The RavenDB backend against the project's emulator (a real server when
-- RAVENDB_URL is set): the shared contracts, then what only a cluster behind
-- HTTP has (failover, node restarts, injected faults, TLS, old servers).
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"
local backends = require "spec.support.backends"
local harness = require "spec.support.ravendb_harness"
local helpers = require "spec.helpers"

local ctx = backends.ravendb(teardown)
local server = ctx.server
local emulator_only = server.real and pending or it   -- real servers take no fault injection
local databases = {}
teardown(function()
    for _, name in ipairs(databases) do harness.delete_database(server, name) end
end)

local t = { describe = describe, it = it, before_each = before_each,
            after_each = after_each, assert = assert }
require("spec.support.store_contract")(t, ctx)
require("spec.support.transaction_contract")(t, ctx)
require("spec.support.lock_contract")(t, ctx)
require("spec.support.recipes_contract")(t, ctx)

describe("ravendb backend", function()
    local st, db

    before_each(function()
        if server.control then harness.control(server, "POST", "/reset") end
        db = harness.create_database(server)
        databases[#databases + 1] = db
        st = assert(cmpxchg.open(server.urls, { database = db, timeout = 2 }))
    end)

    after_each(function()
        if server.control then
            harness.control(server, "DELETE", "/faults")
            harness.control(server, "POST", "/behavior", { pr18822 = true, pr21644 = true })
        end
        st:close()
    end)

    local function state() return harness.control(server, "GET", "/state") end

    it("reports an unknown database as not_found", function()
        local s, err, code = cmpxchg.open(server.urls, { database = "no_such_db_here" })
        assert.is_nil(s)
        assert.equal("not_found", code)
        assert.matches("no_such_db_here", err)
    end)

    emulator_only("applies a write once when its reply was lost (same raft-request-id)", function()
        harness.control(server, "POST", "/faults", { method = "PUT", path_contains = "cmpxchg",
            action = "drop_after_apply", count = 1 })
        local before = state().index
        local ok, index = st:put("k", "v", 0)
        assert.is_true(ok)
        assert.equal(before + 1, state().index)          -- applied exactly once
        assert.same({ "v", index }, { st:get("k") })
        local ids = {}
        for _, r in ipairs(state().requests) do
            if r.method == "PUT" and r.url:find("/cmpxchg?", 1, true) then
                ids[#ids + 1] = r.raft_request_id
            end
        end
        assert.equal(2, #ids)
        assert.equal(ids[1], ids[2])
    end)

    emulator_only("retries a write whose connection dropped before it was applied", function()
        harness.control(server, "POST", "/faults", { method = "DELETE", action = "drop_before_apply" })
        local _, index = st:put("k", "v", 0)
        local before = state().index
        local ok, dindex, value = st:delete("k", index)
        assert.same({ true, "v" }, { ok, value })
        assert.equal(before + 1, state().index)           -- applied once, by the retry
        assert.equal(before + 1, dindex)
        assert.same({ nil, 0 }, { st:get("k") })
    end)

    emulator_only("a lock whose every reply was lost after applying is settled, not doubled", function()
        local nodes = #server.urls
        harness.control(server, "POST", "/faults", { method = "PUT", path_contains = "cmpxchg",
            action = "drop_after_apply", count = math.max(nodes, 2) })
        local before = state().index
        local l = assert(st:lock("printer", { ttl = 30 }))
        assert.equal(before + 1, state().index)          -- one lease written, once
        assert.equal(l:token(), select(2, st:get("printer")))
        assert.equal(l.owner, st:get("printer").Owner)
        -- and a release whose replies are all lost is settled too
        harness.control(server, "POST", "/faults", { method = "DELETE", path_contains = "cmpxchg",
            action = "drop_after_apply", count = math.max(nodes, 2) })
        assert.is_true(l:release())
        assert.same({ nil, 0 }, { st:get("printer") })
    end)

    emulator_only("an auto-renewal whose reply was lost is sent again with its raft id, applied once", function()
        local l = assert(st:lock("printer", { ttl = 3, auto_renew = true }))
        local first = l:token()
        harness.control(server, "POST", "/requests/clear")
        harness.control(server, "POST", "/faults", { method = "PUT", path_contains = "cmpxchg",
            action = "drop_after_apply", count = 1 })
        -- the lost renewal, its resend and one renewal more
        local ids, seen
        helpers.wait_until(function()
            ids, seen = {}, {}
            for _, r in ipairs(state().requests) do
                if r.method == "PUT" and r.url:find("/cmpxchg?", 1, true) then
                    ids[#ids + 1] = r.raft_request_id
                    seen[r.raft_request_id] = (seen[r.raft_request_id] or 0) + 1
                end
            end
            return #ids >= 3
        end, 30, "three renewal requests")
        assert.is_true(l:is_held())
        assert.is_true(l:token() > first)
        -- (a renewal may be in flight between the two reads: they agree once it is in)
        helpers.wait_until(function() return l:token() == select(2, st:get("printer")) end, 30,
            "the lock's token to be the stored index")
        assert.equal(2, seen[ids[1]])       -- the lost one, sent again with its id
        assert.is_true(l:release())
    end)

    emulator_only("auto-renewal fails over to the next node when the preferred one stops", function()
        local l = assert(st:lock("printer", { ttl = 3, auto_renew = true }))
        local first = l:token()
        harness.control(server, "POST", "/nodes/0/stop")
        local ok, err = pcall(function()
            core.sleep(4.2)
            assert.is_true(l:is_held())
            assert.is_true(l:token() > first)
        end)
        harness.control(server, "POST", "/nodes/0/start")
        assert(ok, err)
        assert.is_true(l:release())
    end)

    emulator_only("a deduplicated retry of a failed compare reports the same failure", function()
        assert.is_true((st:put("k", "first", 0)))
        harness.control(server, "POST", "/faults", { method = "PUT", action = "drop_after_apply" })
        local ok, index, value = st:put("k", "second", 0)
        assert.is_false(ok)
        assert.equal("first", value)
        assert.equal(select(2, st:get("k")), index)
    end)

    emulator_only("fails over to the next node when one is stopped, and comes back", function()
        assert.is_true((st:put("a", 1, 0)))
        harness.control(server, "POST", "/nodes/0/stop")
        assert.is_true((st:put("b", 2, 0)))
        assert.equal(1, (st:get("a")))
        harness.control(server, "POST", "/nodes/0/start")
        harness.control(server, "POST", "/nodes/1/stop")
        harness.control(server, "POST", "/nodes/2/stop")
        assert.equal(2, (st:get("b")))
        harness.control(server, "POST", "/nodes/1/start")
        harness.control(server, "POST", "/nodes/2/start")
    end)

    emulator_only("gives connect when every node is down, and never hangs", function()
        for i = 0, #server.urls - 1 do harness.control(server, "POST", "/nodes/" .. i .. "/stop") end
        local ok, err, code = st:put("k", 1, 0)
        assert.is_nil(ok)
        assert.equal("connect", code)
        assert.matches("^connect:", err)
        for i = 0, #server.urls - 1 do harness.control(server, "POST", "/nodes/" .. i .. "/start") end
        assert.is_true((st:put("k", 1, 0)))
    end)

    emulator_only("fails over on 408 and 503 answers without applying them", function()
        for _, status in ipairs({ 408, 503 }) do
            harness.control(server, "POST", "/faults", { method = "PUT", action = "status",
                status = status, count = 1 })
            local ok = st:put("k" .. status, status, 0)
            assert.is_true(ok)
        end
        local puts = 0
        for _, r in ipairs(state().requests) do
            if r.method == "PUT" and r.url:find("/cmpxchg?", 1, true) then puts = puts + 1 end
        end
        assert.equal(4, puts)
    end)

    emulator_only("a server slower than the timeout gives timeout, then the write settles", function()
        harness.control(server, "POST", "/faults", { method = "PUT", action = "delay",
            delay_ms = 4000, count = #server.urls * 2 })
        local t0 = require("cmpxchg.core").monotime()
        local ok, err, code = st:put("slow", 1, 0)
        local took = require("cmpxchg.core").monotime() - t0
        assert.is_nil(ok)
        assert.equal("timeout", code)
        assert.matches("^timeout:", err)
        assert.is_true(took < #server.urls * 2 * 2 + 2, "took " .. took)
    end)

    emulator_only("turns a malformed reply into decode, never a crash", function()
        harness.control(server, "POST", "/faults", { method = "PUT", action = "malformed",
            body = '{"Index": ' })
        local ok, err, code = st:put("k", 1, 0)
        assert.is_nil(ok)
        assert.equal("decode", code)
        assert.matches("^decode:", err)
    end)

    emulator_only("refreshes the topology when the server says it changed", function()
        harness.control(server, "POST", "/requests/clear")
        harness.control(server, "POST", "/topology/bump")
        st:get("k")
        local topology_fetches = 0
        for _, r in ipairs(state().requests) do
            if r.url:find("/topology?name=", 1, true) then topology_fetches = topology_fetches + 1 end
        end
        assert.equal(1, topology_fetches)
    end)

    emulator_only("honours @expires: cleaned by the server's sweep, blocking until then", function()
        -- the sweep runs when the test says (POST /reset brings the period back)
        harness.control(server, "POST", "/expiry", { interval = 0 })
        local _, index = st:put("old", "v", 0, { expires = os.time() - 5 })
        assert.same({ "v", index }, { st:get("old") })
        assert.is_false((st:put("old", "w", 0)))
        harness.control(server, "POST", "/expire-now")
        assert.same({ nil, 0 }, { st:get("old") })
    end)

    emulator_only("gives the same results on servers before PR 18822 and PR 21644", function()
        harness.control(server, "POST", "/behavior", { pr18822 = false, pr21644 = false })
        assert.same({ false, 0 }, { st:delete("absent", 5) })   -- old: Successful with no value
        -- old servers create on a non-zero index: a documented server difference
        local ok = st:put("absent", "v", 5)
        assert.is_true(ok)
    end)

    emulator_only("keeps one connection per node alive", function()
        harness.control(server, "POST", "/requests/clear")
        for i = 1, 10 do assert.is_true((st:put("k" .. i, i, 0))) end
        local sockets, n = {}, 0
        for _, r in ipairs(state().requests) do
            assert.is_number(r.remote_port)
            if not sockets[r.remote_port] then n = n + 1 end
            sockets[r.remote_port] = true
        end
        assert.equal(1, n, n .. " connections for 10 requests")
    end)

    emulator_only("is an HTTPS client that verifies the server and presents its certificate", function()
        local tls_server = harness.server("tls")
        local certs = tls_server.certs
        local good = { ca = certs .. "/ca.crt", cert = certs .. "/client.crt", key = certs .. "/client.key" }
        local name = harness.create_database(tls_server, good)
        local s = assert(cmpxchg.open(tls_server.urls, { database = name, tls = good }))
        assert.is_true((s:put("k", "secure", 0)))
        assert.equal("secure", (s:get("k")))
        s:close()
        -- no client certificate: refused by the server
        local s2, err, code = cmpxchg.open(tls_server.urls[1], { database = name,
            tls = { ca = certs .. "/ca.crt" } })
        assert.is_nil(s2)
        assert.equal("auth", code, err)                  -- 403 InvalidAuth, as RavenDB answers
        assert.matches("^auth: HTTP 403 InvalidAuth: ", err)
        -- a server certificate from a CA we do not trust
        s2, err, code = cmpxchg.open(tls_server.urls[1], { database = name,
            tls = { ca = certs .. "/wrong-ca.crt", cert = good.cert, key = good.key } })
        assert.is_nil(s2)
        assert.equal("tls", code, err)
        -- plain HTTP to an HTTPS node
        local plain = tls_server.urls[1]:gsub("^https", "http")
        s2, err, code = cmpxchg.open(plain, { database = name, timeout = 2 })
        assert.is_nil(s2)
        assert.equal("connect", code)                    -- the TLS server hangs up on it
        assert.matches("^connect: GET http://", err)
        helpers.cleanup()
    end)
end)
