-- luacheck: std +busted
-- scripts/etcd-cluster, the 3-member etcd cluster the etcd backend's tests run against: start,
-- status, leader, kill-leader/restart, pause/resume, kill, stop, and the TLS + auth variant,
-- checked from the outside with curl against the v3 JSON gateway.
--
-- The clusters live under $ETCD_CLUSTER_DIR (plain) and $ETCD_CLUSTER_DIR-tls when the variable
-- is set (the test runner sets it per run), else under a fresh temporary name. Both are stopped
-- in teardown. Needs etcd (Debian etcd-server / etcd-client), curl and openssl.
local cjson = require "cjson"
local helpers = require "spec.helpers"

local SCRIPT = "scripts/etcd-cluster"
local quote = helpers.shell_quote

local base = os.getenv("ETCD_CLUSTER_DIR")
local own_base = false
if not base or base == "" then
    base = os.tmpname()
    os.remove(base)
    own_base = true
end

local function read_file(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local text = f:read("*a")
    f:close()
    return text
end

-- Runs a shell command without the ASan run's preload (etcd, curl and bash are no part of what
-- it checks): stdout, success, exit code, stderr.
local function sh(command)
    local errfile = os.tmpname()
    local p = assert(helpers.popen("env -u LD_PRELOAD ETCD_CLUSTER_DIR=" .. quote(base) .. " "
        .. command .. " 2>" .. quote(errfile), "r"))
    local out = p:read("*a")
    local ok, _, code = helpers.pclose(p)
    local err = read_file(errfile) or ""
    os.remove(errfile)
    return out, ok == true, code, err
end

-- scripts/etcd-cluster ARGS: trimmed stdout, success, exit code, stderr
local function cluster(args)
    local out, ok, code, err = sh(SCRIPT .. " " .. args)
    return (out:gsub("%s+$", "")), ok, code, err
end

-- the same, which must succeed
local function cluster_ok(args)
    local out, ok, code, err = cluster(args)
    assert(ok, ("%s %s failed (exit %s): %s"):format(SCRIPT, args, tostring(code), err))
    return out
end

local monotime = require("cmpxchg.core").monotime

local function wait_until(fn, timeout, what)
    return helpers.wait_until(fn, timeout, what)
end

---------------------------------------------------------------------------------------------
-- base64 (the gateway's bytes fields)

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function b64(s)
    return ((s:gsub(".", function(c)
        local bits, byte = {}, c:byte()
        for i = 8, 1, -1 do bits[#bits + 1] = (byte % 2 ^ i - byte % 2 ^ (i - 1) > 0) and "1" or "0" end
        return table.concat(bits)
    end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
        if #x < 6 then return "" end
        local n = 0
        for i = 1, 6 do n = n * 2 + (x:sub(i, i) == "1" and 1 or 0) end
        return B64:sub(n + 1, n + 1)
    end) .. ({ "", "==", "=" })[#s % 3 + 1])
end

local function unb64(s)
    s = s:gsub("[^%w%+/=]", "")
    return (s:gsub(".", function(c)
        if c == "=" then return "" end
        local n, bits = B64:find(c, 1, true) - 1, {}
        for i = 6, 1, -1 do bits[#bits + 1] = (n % 2 ^ i - n % 2 ^ (i - 1) > 0) and "1" or "0" end
        return table.concat(bits)
    end):gsub("%d%d%d?%d?%d?%d?%d?%d?", function(x)
        if #x ~= 8 then return "" end
        local n = 0
        for i = 1, 8 do n = n * 2 + (x:sub(i, i) == "1" and 1 or 0) end
        return string.char(n)
    end))
end

---------------------------------------------------------------------------------------------
-- the gateway through the curl CLI

-- POST a JSON body to URL .. PATH. opts: tls = {ca=, cert=, key=} (each optional), token,
-- max_time (s, default 5). Returns the HTTP status (0 when nothing came back), the decoded
-- body (or the raw text), curl's exit code.
local function post(url, path, body, opts)
    opts = opts or {}
    local outfile = os.tmpname()
    local parts = { "curl -sS", "--max-time", tostring(opts.max_time or 5), "--connect-timeout 2",
                    "-o", quote(outfile), "-w '%{http_code}'", "-X POST",
                    "-H 'Content-Type: application/json'", "-H 'Grpc-Metadata-hasleader: true'" }
    local tls = opts.tls or {}
    if tls.ca then parts[#parts + 1] = "--cacert " .. quote(tls.ca) end
    if tls.cert then parts[#parts + 1] = "--cert " .. quote(tls.cert) end
    if tls.key then parts[#parts + 1] = "--key " .. quote(tls.key) end
    if opts.token then parts[#parts + 1] = "-H " .. quote("Authorization: " .. opts.token) end
    parts[#parts + 1] = "-d " .. quote(cjson.encode(body))
    parts[#parts + 1] = quote(url .. path)
    local out, _, code = sh(table.concat(parts, " "))
    local text = read_file(outfile) or ""
    os.remove(outfile)
    local ok, decoded = pcall(cjson.decode, text)
    return tonumber(out:match("%d+")) or 0, ok and decoded or text, code
end

local function put(url, key, value, opts)
    return post(url, "/v3/kv/put", { key = b64(key), value = b64(value) }, opts)
end

-- the value at KEY through URL: status, value (nil when absent), body, curl's exit code
local function get(url, key, opts, serializable)
    local status, body, rc = post(url, "/v3/kv/range",
        { key = b64(key), serializable = serializable }, opts)
    local value
    if status == 200 and type(body) == "table" and body.kvs then
        value = unb64(body.kvs[1].value or "")
    end
    return status, value, body, rc
end

---------------------------------------------------------------------------------------------
-- reading the script's answers

local function split_endpoints(text)
    local list = {}
    for url in text:gmatch("[^,]+") do list[#list + 1] = url end
    return list
end

-- status: members[i] = {name, pid, url, state, role} for m0..m2 (i = 1..3), and the leader line
local function status(tls)
    local out, ok, code = cluster((tls and "--tls " or "") .. "status")
    local members, leader = {}, nil
    for line in out:gmatch("[^\n]+") do
        local name, pid, url, st, role = line:match("^(m%d) (%S+) (%S+) (%S+) (%S+)$")
        if name then
            members[#members + 1] = { name = name, pid = tonumber(pid), url = url, state = st,
                                      role = role }
        end
        leader = line:match("^leader (%S+)$") or leader
    end
    return members, leader, ok, code, out
end

local function pids(tls)
    local list = {}
    for i, m in ipairs((status(tls))) do list[i] = m.pid or false end
    return list
end

-- a process that exited (a zombie not yet reaped counts as gone)
local function gone(pid)
    local stat = read_file("/proc/" .. pid .. "/stat")
    return stat == nil or stat:match("^%d+ %b() (%a)") == "Z"
end

local function index_of(text)
    local n = tonumber(text)
    assert(n and n == math.floor(n) and n >= 0 and n <= 2,
        "expected a member index 0..2, got " .. tostring(text))
    return n
end

---------------------------------------------------------------------------------------------

teardown(function()
    cluster("stop")
    cluster("--tls stop")
    if own_base then
        os.execute("rm -rf " .. quote(base) .. " " .. quote(base .. "-tls"))
    end
end)

describe("scripts/etcd-cluster", function()
    local eps

    setup(function()
        local t0 = monotime()
        cluster_ok("start")
        assert(monotime() - t0 < 30, "start took more than 30 s")
        eps = split_endpoints(cluster_ok("endpoints"))
    end)

    -- whatever a test did to the members, the next one starts with all three running
    after_each(function()
        if select(2, cluster("status")) then cluster_ok("start") end
    end)

    it("starts three http members whose endpoints each take a put and read the others' writes",
        function()
            assert.are.equal(3, #eps)
            local seen = {}
            for i, url in ipairs(eps) do
                local port = url:match("^http://127%.0%.0%.1:(%d+)$")
                assert.is_truthy(port, url)
                assert.is_nil(seen[port])
                seen[port] = true
                assert.are.equal(url, cluster_ok("endpoint " .. (i - 1)))
            end
            for i, url in ipairs(eps) do
                local st, body = put(url, "spec/start/" .. i, "value " .. i)
                assert.are.equal(200, st, cjson.encode(body))
                assert.is_truthy(tonumber(body.header.revision) > 1)
            end
            for _, url in ipairs(eps) do
                for i = 1, 3 do
                    local st, value = get(url, "spec/start/" .. i)
                    assert.are.equal(200, st)
                    assert.are.equal("value " .. i, value)
                end
            end
        end)

    it("start again leaves the running cluster as it is", function()
        local before = pids()
        local t0 = monotime()
        cluster_ok("start")
        assert.is_true(monotime() - t0 < 5)
        assert.are.same(before, pids())
        assert.are.same(eps, split_endpoints(cluster_ok("endpoints")))
        local _, value = get(eps[1], "spec/start/2")
        assert.are.equal("value 2", value)
    end)

    it("status lists three running members, one of them the leader that `leader` names",
        function()
            local members, leader_line, ok = status()
            assert.is_true(ok)
            assert.are.equal(3, #members)
            local leaders = {}
            for i, m in ipairs(members) do
                assert.are.equal("m" .. (i - 1), m.name)
                assert.are.equal(eps[i], m.url)
                assert.are.equal("running", m.state)
                assert.is_truthy(m.pid and not gone(m.pid))
                if m.role == "leader" then leaders[#leaders + 1] = i - 1
                else assert.are.equal("follower", m.role) end
            end
            assert.are.equal(1, #leaders)
            local idx = index_of(cluster_ok("leader"))
            assert.are.equal(leaders[1], idx)
            assert.are.equal("m" .. idx, leader_line)
            -- and etcd agrees: the leader's own status names itself, a follower's names it too
            local st, own = post(eps[idx + 1], "/v3/maintenance/status", {})
            assert.are.equal(200, st)
            assert.are.equal(own.header.member_id, own.leader)
            local _, other = post(eps[(idx + 1) % 3 + 1], "/v3/maintenance/status", {})
            assert.are.equal(own.leader, other.leader)
        end)

    it("kill-leader: a survivor takes writes under a new leader; restart brings it back",
        function()
            local old = index_of(cluster_ok("kill-leader"))
            local members = status()
            assert.are.equal("dead", members[old + 1].state)
            local st = post(eps[old + 1], "/v3/maintenance/status", {}, { max_time = 1 })
            assert.are.equal(0, st)

            local survivor = eps[(old + 1) % 3 + 1]
            wait_until(function()
                return put(survivor, "spec/failover", "after kill") == 200
            end, 20, "a write through a survivor")
            local new = index_of(cluster_ok("leader"))
            assert.are_not.equal(old, new)

            cluster_ok("restart " .. old)
            members = status()
            assert.are.equal("running", members[old + 1].state)
            -- its own copy (serializable) catches up with the write it missed
            wait_until(function()
                local _, value = get(eps[old + 1], "spec/failover", nil, true)
                return value == "after kill"
            end, 15, "the restarted member to serve the new write")
            local st2, value = get(eps[old + 1], "spec/failover")
            assert.are.equal(200, st2)
            assert.are.equal("after kill", value)
        end)

    it("pause N: that endpoint does not answer within 1 s while the others work; resume N",
        function()
            local n = (index_of(cluster_ok("leader")) + 1) % 3   -- a follower
            cluster_ok("pause " .. n)
            assert.are.equal("paused", status()[n + 1].state)

            local t0 = monotime()
            local st, _, _, rc = get(eps[n + 1], "spec/start/1", { max_time = 1 })
            assert.are.equal(0, st)
            assert.are.equal(28, rc)   -- curl: operation timed out
            assert.is_true(monotime() - t0 < 3)
            for i = 1, 3 do
                if i ~= n + 1 then
                    local pst = put(eps[i], "spec/pause/" .. i, "while paused", { max_time = 3 })
                    assert.are.equal(200, pst)
                end
            end

            cluster_ok("resume " .. n)
            assert.are.equal("running", status()[n + 1].state)
            local other = (n + 1) % 3 + 1
            wait_until(function()
                local rst, value = get(eps[n + 1], "spec/pause/" .. other, { max_time = 1 })
                return rst == 200 and value == "while paused"
            end, 15, "the resumed member to answer")
        end)

    it("kill N: that member is dead, the others still take writes; restart N", function()
        local n = (index_of(cluster_ok("leader")) + 2) % 3
        local pid = status()[n + 1].pid
        cluster_ok("kill " .. n)
        assert.are.equal("dead", status()[n + 1].state)
        assert.is_true(gone(pid))
        local st = put(eps[(n + 1) % 3 + 1], "spec/kill", "one member down", { max_time = 3 })
        assert.are.equal(200, st)
        cluster_ok("restart " .. n)
        wait_until(function()
            local _, value = get(eps[n + 1], "spec/kill", { max_time = 2 })
            return value == "one member down"
        end, 15, "the restarted member to serve reads")
    end)

    it("stop ends every member and removes the data; the next start is a fresh cluster",
        function()
            local before = pids()
            cluster_ok("stop")
            assert.are.equal(3, #before)
            for _, pid in ipairs(before) do assert.is_true(pid and gone(pid)) end
            local out, ok, code = cluster("status")
            assert.is_false(ok)
            assert.are.equal(1, code)
            assert.are.equal("stopped", out)
            for i = 0, 2 do
                local dir = base .. "/m" .. i .. ".data"
                assert.is_false(select(2, sh("test -e " .. quote(dir))), dir .. " is still there")
                assert.is_truthy(read_file(base .. "/m" .. i .. ".log"))   -- the logs stay
            end
            assert.is_false(select(2, cluster("endpoints")))

            cluster_ok("start")
            eps = split_endpoints(cluster_ok("endpoints"))
            local st, value, body = get(eps[1], "spec/start/1")
            assert.are.equal(200, st)
            assert.is_nil(value)
            assert.are.equal("1", body.header.revision)
        end)

    it("refuses a bad member index", function()
        local _, ok, _, err = cluster("pause 3")
        assert.is_false(ok)
        assert.is_truthy(err:find("0, 1 or 2", 1, true))
    end)
end)

describe("scripts/etcd-cluster --tls", function()
    local eps, certs, tls

    local function token(url, name, password)
        local st, body = post(url, "/v3/auth/authenticate", { name = name, password = password },
            { tls = tls })
        return st, body, type(body) == "table" and body.token or nil
    end

    setup(function()
        local t0 = monotime()
        cluster_ok("start --tls")
        assert(monotime() - t0 < 45, "start --tls took more than 45 s")
        eps = split_endpoints(cluster_ok("--tls endpoints"))
        certs = cluster_ok("certs")
        tls = { ca = certs .. "/ca.crt", cert = certs .. "/client.crt", key = certs .. "/client.key" }
    end)

    it("serves https endpoints and keeps its certificates in <dir>-tls/certs", function()
        assert.are.equal(3, #eps)
        for i, url in ipairs(eps) do
            assert.is_truthy(url:match("^https://127%.0%.0%.1:%d+$"), url)
            assert.are.equal(url, cluster_ok("--tls endpoint " .. (i - 1)))
        end
        assert.are.equal(base .. "-tls/certs", certs)
        for _, f in ipairs({ "ca.crt", "ca.key", "server.crt", "server.key", "client.crt",
                             "client.key", "wrong-ca.crt", "wrong-client.crt",
                             "wrong-client.key" }) do
            assert.is_truthy(read_file(certs .. "/" .. f), f)
        end
        -- the two gateway traps: a client certificate without CN, a server one with clientAuth
        local subject = sh("openssl x509 -noout -subject -in " .. quote(certs .. "/client.crt"))
        assert.is_truthy(subject:find("etcd-clients", 1, true))
        assert.is_nil(subject:find("CN", 1, true))
        local ext = sh("openssl x509 -noout -ext extendedKeyUsage,subjectAltName -in "
            .. quote(certs .. "/server.crt"))
        assert.is_truthy(ext:find("TLS Web Client Authentication", 1, true))
        assert.is_truthy(ext:find("TLS Web Server Authentication", 1, true))
        assert.is_truthy(ext:find("IP Address:127.0.0.1", 1, true))
        assert.is_truthy(ext:find("DNS:localhost", 1, true))
    end)

    it("appuser with the CA, a client certificate and a token puts and reads app:x", function()
        local st, body, tok = token(eps[1], "appuser", "apppw")
        assert.are.equal(200, st, cjson.encode(body))
        assert.is_truthy(tok)
        local pst, pbody = put(eps[2], "app:x", "tls value", { tls = tls, token = tok })
        assert.are.equal(200, pst, cjson.encode(pbody))
        local gst, value = get(eps[3], "app:x", { tls = tls, token = tok })
        assert.are.equal(200, gst)
        assert.are.equal("tls value", value)
    end)

    it("appuser gets 403 permission denied outside app: (database 'app'), app/ included", function()
        local _, _, tok = token(eps[1], "appuser", "apppw")
        local st, body = put(eps[1], "other/x", "nope", { tls = tls, token = tok })
        assert.are.equal(403, st)
        assert.are.equal("etcdserver: permission denied", body.error)
        -- 'app/x' belongs to no database of appuser's since databases end in ':'
        assert.are.equal(403, (put(eps[1], "app/x", "nope", { tls = tls, token = tok })))
        -- root may
        local _, _, root = token(eps[1], "root", "rootpw")
        assert.are.equal(200, (put(eps[1], "other/x", "root was here", { tls = tls, token = root })))
    end)

    it("without a token a request gets 400 user name is empty", function()
        local st, body = put(eps[1], "app:y", "v", { tls = tls })
        assert.are.equal(400, st)
        assert.are.equal("etcdserver: user name is empty", body.error)
    end)

    it("a wrong password gets 400 authentication failed", function()
        local st, body, tok = token(eps[1], "appuser", "wrong")
        assert.are.equal(400, st)
        assert.is_nil(tok)
        assert.is_truthy(body.error:find("authentication failed", 1, true), body.error)
    end)

    it("fails at TLS without a client certificate, with one from another CA, or without the CA",
        function()
            local st, _, rc = post(eps[1], "/v3/auth/authenticate",
                { name = "appuser", password = "apppw" }, { tls = { ca = tls.ca } })
            assert.are.equal(0, st)
            assert.are_not.equal(0, rc)
            st, _, rc = post(eps[1], "/v3/auth/authenticate", { name = "appuser", password = "apppw" },
                { tls = { ca = tls.ca, cert = certs .. "/wrong-client.crt",
                          key = certs .. "/wrong-client.key" } })
            assert.are.equal(0, st)
            assert.are_not.equal(0, rc)
            st, _, rc = post(eps[1], "/v3/auth/authenticate", { name = "appuser", password = "apppw" },
                { tls = { cert = tls.cert, key = tls.key } })
            assert.are.equal(0, st)
            assert.are.equal(60, rc)   -- curl: the server certificate cannot be verified
        end)

    it("start --tls again leaves it as it is; the plain cluster runs beside it", function()
        local before = pids(true)
        cluster_ok("start --tls")
        assert.are.same(before, pids(true))

        cluster_ok("start")
        local plain = split_endpoints(cluster_ok("endpoints"))
        local ports = {}
        for _, url in ipairs(eps) do ports[url:match(":(%d+)$")] = true end
        for _, url in ipairs(plain) do
            assert.is_truthy(url:match("^http://"))
            assert.is_nil(ports[url:match(":(%d+)$")])
            assert.are.equal(200, (put(url, "spec/beside", "plain")))
        end
        local _, _, tok = token(eps[1], "appuser", "apppw")
        assert.are.equal(200, (put(eps[1], "app:beside", "tls", { tls = tls, token = tok })))
        -- plain HTTP to a TLS member gets no HTTP answer
        local st, _, rc = put((eps[1]:gsub("^https", "http")), "app:z", "v")
        assert.are.equal(0, st)
        assert.are_not.equal(0, rc)
    end)
end)
