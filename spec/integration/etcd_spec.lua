-- The etcd backend on a real 3-member Raft cluster started by
-- scripts/etcd-cluster: the shared contracts, then leases, failures of
-- members (killed leader, paused member, all gone), and TLS with etcd auth.
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"
local backends = require "spec.support.backends"
local harness = require "spec.support.etcd_harness"
local helpers = require "spec.helpers"
local json = require "cmpxchg.json"

local ctx = backends.etcd()
local cluster = ctx.cluster

local t = { describe = describe, it = it, before_each = before_each,
            after_each = after_each, assert = assert }
require("spec.support.store_contract")(t, ctx)
require("spec.support.transaction_contract")(t, ctx)
require("spec.support.lock_contract")(t, ctx)
require("spec.support.recipes_contract")(t, ctx)

--- Runs `procs` lock contenders for `rounds` each (holding `hold` seconds);
-- once `at` sections are done, calls disturb() and notes when. Returns the
-- figures: attempted, acquired, failed cleanly, overlaps, acquired after the
-- disturbance began.
--- `procs` processes take the lock `rounds` times each; each waits at a gate
-- after its first `before` rounds, and disturb(go) disturbs the cluster and
-- calls go() to let them all go on into the disturbance (a gate, not a
-- count of sections seen in time: under ASan the contenders had all finished
-- before a slow parent saw 30 sections done).
local function contend_while(prefix, procs, rounds, hold, before, disturb)
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. helpers.shell_quote(dir)))
    local gate = dir .. "/go"
    local children = {}
    for i = 1, procs do
        children[i] = helpers.start("spec/support/etcd_contender.lua", {
            table.concat(cluster.endpoints, ","), prefix, tostring(rounds), dir .. "/log." .. i,
            tostring(hold), gate, tostring(before) })
    end
    local function progress()
        local n = 0
        for i = 1, procs do
            local f = io.open(dir .. "/log." .. i)
            if f then
                for _ in f:lines() do n = n + 1 end
                f:close()
            end
        end
        return n
    end
    helpers.wait_until(function() return progress() >= procs * before end, 120,
        "every contender at the gate")
    local disturbed_at
    disturb(function()
        disturbed_at = core.monotime()
        helpers.write_file(gate, "")
    end)
    assert(disturbed_at, "the disturbance never opened the gate")
    local sections, attempted, failed, after = {}, 0, 0, 0
    for i = 1, procs do
        local out = children[i]:read("*a")
        assert.is_true((helpers.pclose(children[i])), "contender " .. i .. ": " .. out)
        for line in io.lines(dir .. "/log." .. i) do
            local kind, a, b, c = line:match("^(%a+) (%S+) ?(%S*) ?(%S*)$")
            attempted = attempted + 1
            if kind == "held" then
                sections[#sections + 1] = { token = tonumber(a), t0 = tonumber(b), t1 = tonumber(c) }
                if tonumber(b) > disturbed_at then after = after + 1 end
            else
                assert.matches("^failed", line)
                failed = failed + 1
            end
        end
    end
    os.execute("rm -rf " .. helpers.shell_quote(dir))
    table.sort(sections, function(x, y) return x.t0 < y.t0 end)
    local overlaps = 0
    for i = 2, #sections do
        if sections[i].t0 < sections[i - 1].t1 or sections[i].token <= sections[i - 1].token then
            overlaps = overlaps + 1
        end
    end
    return attempted, #sections, failed, overlaps, after
end

local function report(what, attempted, acquired, failed, overlaps, after)
    io.stderr:write(("\n[etcd] %s: %d attempted, %d acquired (%d after it began), %d failed "
        .. "cleanly, %d overlaps\n"):format(what, attempted, acquired, after, failed, overlaps))
end

describe("etcd backend", function()
    local st, prefix

    before_each(function()
        prefix = harness.fresh_prefix()
        st = assert(cmpxchg.open(cluster.endpoints, { database = prefix, timeout = 3 }))
    end)

    after_each(function() st:close() end)

    it("expires items through a lease, which etcd really deletes", function()
        local _, index = st:put("session", "s", 0, { expires = os.time() + 1 })
        assert.same({ "s", index }, { st:get("session") })
        helpers.wait_until(function() return select(2, st:get("session")) == 0 end, 15,
            "the lease to expire")
        assert.is_true((st:put("session", "again", 0)))
    end)

    it("shares leases between writes whose expiries are close", function()
        local http = core.http_new()
        local function leases()
            local status, body = http:request("POST", (cluster.endpoints[1]:gsub("^etcd", "http"))
                .. "/v3/lease/leases", "{}", nil, 5)
            assert.equal(200, status)
            local n = 0
            for _ in body:gmatch('"ID"') do n = n + 1 end
            return n
        end
        local before = leases()
        local base = os.time() + 600
        for i = 1, 10 do assert.is_true((st:put("item/" .. i, i, 0, { expires = base + i })) ) end
        assert.is_true(leases() - before <= 2, "a lease per write")
        http:close()
    end)

    it("a cluster that vanishes mid-request gives timeout, never a hang", function()
        for i = 0, 2 do cluster.run("pause " .. i) end
        local t0 = core.monotime()
        local ok, err, code = st:put("k", 1, 0)
        local took = core.monotime() - t0
        for i = 0, 2 do cluster.run("resume " .. i) end
        assert.is_nil(ok)
        assert.equal("timeout", code, err)
        assert.is_true(took < 3 * 3 + 2, "took " .. took)
        helpers.wait_until(function() return st:put("k", 1, 0) ~= nil end, 20, "the cluster back")
    end)

    describe("auto-renew", function()
        local proxy, proxy_pid, proxy_url

        --- A fault proxy (spec/support/fault_proxy.js) in front of member 0.
        local function start_proxy()
            local upstream = cluster.endpoints[1]:gsub("^etcd", "http")
            proxy = assert(io.popen("exec env -u LD_PRELOAD node spec/support/fault_proxy.js "
                .. helpers.shell_quote(upstream), "r"))
            local line = assert(proxy:read("*l"), "the fault proxy did not start")
            local port
            port, proxy_pid = line:match("^(%d+) (%d+)$")
            proxy_url = "http://127.0.0.1:" .. port
        end

        --- A store (timeout 10 s) whose first endpoint is the proxied member,
        -- so that the renewal thread's own store asks it first; stopped, the
        -- proxy takes connections and never answers.
        local function proxied_first()
            start_proxy()
            local endpoints = { (proxy_url:gsub("^http", "etcd")) }
            for i = 2, #cluster.endpoints do endpoints[#endpoints + 1] = cluster.endpoints[i] end
            return assert(cmpxchg.open(endpoints, { database = prefix, timeout = 10 }))
        end

        local function faults(body)
            local http = core.http_new()
            local status, reply = http:request(body and "POST" or "GET", proxy_url .. "/__faults",
                body and json.encode(body) or nil, nil, 5)
            http:close()
            assert.equal(200, status)
            return json.decode(reply)
        end

        after_each(function()
            if proxy then
                os.execute("kill " .. proxy_pid)
                proxy:close()
                proxy = nil
            end
        end)

        it("a renewal whose reply was lost after it applied is recognized as ours", function()
            start_proxy()
            local via = assert(cmpxchg.open(proxy_url:gsub("^http", "etcd"),
                { database = prefix, timeout = 3 }))
            local l = assert(via:lock("k", { ttl = 3, auto_renew = true }))
            local first = l:token()
            faults({ path_contains = "/v3/kv/txn", count = 1 })
            -- a renewal's reply is dropped after it applied; then one more renewal
            -- must succeed on the lease that one left
            helpers.wait_until(function() return faults().dropped == 1 end, 30,
                "a renewal's reply to be dropped")
            local at_drop = l:token()
            helpers.wait_until(function() return l:token() > at_drop end, 30,
                "a renewal after the dropped one")
            assert.equal(1, faults().dropped)
            assert.is_true(l:is_held())
            assert.is_true(l:token() > first)
            -- (a renewal may be in flight between the two reads: they agree once it is in)
            helpers.wait_until(function() return l:token() == select(2, st:get("k")) end, 30,
                "the lock's token to be the stored index")
            assert.equal(l.owner, st:get("k").Owner)
            assert.is_nil((st:lock("k", { timeout = 0 })))
            assert.is_true(l:release())
            assert.same({ nil, 0 }, { st:get("k") })
            via:close()
        end)

        it("a renewal's request to a member that hangs is cut in time to renew through another",
                function()
            local via = proxied_first()
            local l = assert(via:lock("k", { ttl = 3, auto_renew = true }))
            local first = l:token()
            -- a first renewal through the proxy: the thread's store is open
            -- and prefers the proxied member, which answered it
            helpers.wait_until(function() return l:token() > first end, 10, "a first renewal")
            local renewed = l:token()
            os.execute("kill -STOP " .. proxy_pid)
            -- each request may take half of what is left of the lease (about
            -- 0.9 s at a renewal), never the store's 10 s
            local ok, err = pcall(helpers.wait_until, function() return l:token() > renewed end,
                10, "a renewal through another member")
            os.execute("kill -CONT " .. proxy_pid)
            assert(ok, err)
            assert.is_true(l:is_held())
            assert.is_true(l:release())
            via:close()
        end)

        it("the renewal thread's store opens through another member when the first one hangs",
                function()
            -- the thread opens its store just before the first renewal is due;
            -- its probe goes to the first endpoint, the proxied member, stopped
            -- before then: it must be cut as a renewal's request is (at half the
            -- lease left), not wait the store's 10 s while the 3 s lease runs out
            local via = proxied_first()
            local l = assert(via:lock("k", { ttl = 3, auto_renew = true }))
            local first = l:token()
            os.execute("kill -STOP " .. proxy_pid)
            local ok, err = pcall(helpers.wait_until, function() return l:token() > first end,
                10, "a first renewal through another member")
            os.execute("kill -CONT " .. proxy_pid)
            assert(ok, err)
            assert.is_true(l:is_held())
            assert.is_true(l:release())
            via:close()
        end)

        it("renewal goes on through another member when the preferred one, the leader, dies", function()
            -- the worst case: the member renewals go to first is the leader, so
            -- the others must also elect a new one within the lease. An election
            -- takes 1-2 election timeouts (1 s here), so the lease must be longer
            -- than the first renewal (ttl/3) plus that: 6 s
            local leader = tonumber(cluster.run("leader"))
            local endpoints = { cluster.endpoints[leader + 1] }
            for i, url in ipairs(cluster.endpoints) do
                if i ~= leader + 1 then endpoints[#endpoints + 1] = url end
            end
            local via = assert(cmpxchg.open(endpoints, { database = prefix, timeout = 3 }))
            local l = assert(via:lock("k", { ttl = 6, auto_renew = true }))
            local first = l:token()
            cluster.run("kill " .. leader)
            local ok, err = pcall(function()
                core.sleep(6.5)                 -- past the first lease
                assert.is_true(l:is_held(), "lost during the election")
                assert.is_true(l:token() > first)
            end)
            cluster.run("restart " .. leader)
            assert(ok, err)
            assert.is_true(l:release())
            via:close()
        end)
    end)

    it("locks stay exclusive while the leader is killed mid-run", function()
        local attempted, acquired, failed, overlaps, after = contend_while(prefix, 4, 40, 0.01, 8,
            function(go)
                local leader = cluster.run("kill-leader")
                go()
                core.sleep(1.5)     -- acquisitions go on through the other members meanwhile
                cluster.run("restart " .. leader)
            end)
        report("leader killed", attempted, acquired, failed, overlaps, after)
        assert.equal(160, attempted)
        assert.equal(0, overlaps)
        assert.is_true(after >= 30, "too few acquisitions after the kill: " .. after)
    end)

    it("locks stay exclusive while a member is paused mid-run", function()
        local attempted, acquired, failed, overlaps, after = contend_while(prefix, 4, 40, 0.01, 8,
            function(go)
                cluster.run("pause 0")
                go()
                core.sleep(2.5)     -- longer than a request's timeout
                cluster.run("resume 0")
            end)
        report("member 0 paused", attempted, acquired, failed, overlaps, after)
        assert.equal(160, attempted)
        assert.equal(0, overlaps)
        assert.is_true(after >= 30, "too few acquisitions after the pause: " .. after)
    end)
end)

describe("etcd databases", function()
    it("never share keys, whatever their names", function()
        local base = harness.fresh_prefix()
        require("spec.support.database_isolation")(assert, function(name)
            return cmpxchg.open(cluster.endpoints, { database = name, timeout = 3 })
        end, { base, base .. "/eu", base .. "/", base .. "x", "" })
    end)
end)

describe("etcd with TLS and auth", function()
    local tls = harness.cluster("tls")
    local certs = tls.certs
    local good = { ca = certs .. "/ca.crt", cert = certs .. "/client.crt", key = certs .. "/client.key" }
    local function open(opts)
        local o = { database = "app", user = "appuser", password = "apppw", tls = good, timeout = 3 }
        for k, v in pairs(opts or {}) do o[k] = v end
        return cmpxchg.open(tls.endpoints, o)
    end

    local function with_s(url) return (url:gsub("^etcd://", "etcds://")) end
    for i, url in ipairs(tls.endpoints) do tls.endpoints[i] = with_s(url) end

    it("works with the right certificate and password, within the role's prefix", function()
        local st = assert(open())
        local key = "k" .. harness.fresh_prefix()
        local _, index = st:put(key, "secret", 0)
        assert.same({ "secret", index }, { st:get(key) })
        assert.is_true((st:delete(key, index)))
        local l = assert(st:lock("lock" .. harness.fresh_prefix()))
        assert.is_true(l:release())
        -- the renewal thread brings its own certificate and token
        l = assert(st:lock("lock" .. harness.fresh_prefix(), { ttl = 3, auto_renew = true }))
        local first = l:token()
        core.sleep(4.2)
        assert.is_true(l:is_held())
        assert.is_true(l:token() > first)
        assert.is_true(l:release())
        st:close()
    end)

    it("refuses clearly, changing nothing: no certificate, wrong CA, wrong password, other prefix", function()
        local cases = {
            { { tls = { ca = good.ca } }, "tls" },
            { { tls = { ca = certs .. "/wrong-ca.crt", cert = good.cert, key = good.key } }, "tls" },
            { { tls = { ca = good.ca, cert = certs .. "/wrong-client.crt",
                        key = certs .. "/wrong-client.key" } }, "tls" },
            { { password = "wrong" }, "auth" },
            { { database = "other" }, "auth" },
        }
        local function snapshot()
            local st = assert(open())
            local items = assert(st:list(""))
            st:close()
            local out = {}
            for _, item in ipairs(items) do out[item.key] = item.index end
            return out
        end
        local before = snapshot()
        -- the server's refusal races our first request (TLS 1.3): try each case often
        for _ = 1, 8 do
            for i, c in ipairs(cases) do
                local st, err, code = open(c[1])
                assert.is_nil(st, "case " .. i)
                assert.equal(c[2], code, ("case %d: %s"):format(i, tostring(err)))
                assert.matches("^" .. c[2] .. ": ", err)
            end
        end
        assert.same(before, snapshot())     -- nothing in the role's prefix changed
    end)
end)
