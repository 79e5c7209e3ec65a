-- cmpxchg.leader_job inside real nginx: two nginx instances (two "hosts" on
-- this machine, 2 workers each, scripts/nginx-test-server with state
-- directories of their own) run one job every 0.2 s through the handlers of
-- spec/support/nginx/app.lua, on the embedded store and on the etcd cluster.
-- Exactly one worker of the four runs it at a time; when its worker is
-- SIGKILLed, and then when the whole host of the next leader is SIGKILLed,
-- another worker takes over within ttl + retry (plus a margin for a loaded
-- machine); a host that quits gracefully resigns, so the next run does not
-- wait for the lease to end.
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"
local etcd_harness = require "spec.support.etcd_harness"
local helpers = require "spec.helpers"

if os.getenv("CMPXCHG_SKIP_NGINX") == "1" then
    describe("nginx leader job", function()
        pending("runs in the plain pass only (nginx loads the uninstrumented LuaJIT build)")
    end)
    return
end

local q = helpers.shell_quote
local BASE = os.getenv("NGINX_TEST_DIR") or "/tmp/cmpxchg-nginx-test"
local TTL, RETRY, EVERY = 4, 0.25, 0.2
local MARGIN = 3            -- seconds a loaded machine may add to a failover

local http = core.http_new()

local function host(tag)
    local dir = BASE .. "-leader-" .. tag
    local env = "NGINX_TEST_DIR=" .. q(dir) .. " "
    local h = { tag = tag, dir = dir }
    function h.start()
        helpers.sh(env .. "scripts/nginx-test-server start")
        h.url = helpers.sh(env .. "scripts/nginx-test-server url")
        h.master = tonumber(helpers.read_file(dir .. "/master.pid"))
    end
    function h.stop() helpers.sh(env .. "scripts/nginx-test-server stop") end
    --- SIGKILL of the whole instance: the master and its workers (its own
    -- session and process group: the script starts it with setsid)
    function h.kill()
        os.execute(("kill -KILL -%d 2>/dev/null"):format(h.master))     -- (dash: no "--")
        helpers.wait_until(function()
            local state = helpers.proc_state(h.master)
            return state == nil or state == "Z"
        end, 20,
            "host " .. tag .. " to die")
        os.remove(dir .. "/master.pid")
    end
    function h.configure(params)
        local parts = {}
        for k, v in pairs(params) do
            parts[#parts + 1] = k .. "=" .. tostring(v):gsub("[^%w%-%._~]", function(c)
                return ("%%%02X"):format(c:byte())
            end)
        end
        parts[#parts + 1] = "tag=" .. tag
        local status, body = http:request("GET", h.url .. "/job/config?" .. table.concat(parts, "&"),
            nil, nil, 10)
        assert(status == 200, "configure host " .. tag .. ": " .. tostring(body))
    end
    return h
end

--- The runs logged so far: {tag, pid, token, at}, in time order.
local function runs(log)
    local out = {}
    local f = io.open(log)
    if not f then return out end
    for line in f:lines() do
        local tag, pid, token, at = line:match("^(%S+) (%d+) (%d+) (%S+)$")
        if tag then
            out[#out + 1] = { tag = tag, pid = tonumber(pid), token = tonumber(token),
                              at = tonumber(at), who = tag .. ":" .. pid }
        end
    end
    f:close()
    table.sort(out, function(a, b) return a.at < b.at end)
    return out
end

--- Exactly one runner at a time: consecutive runs by one worker, and a
-- worker that lost the job never runs it again; tokens rise at each change.
local function check_one_at_a_time(list)
    local gone = {}
    for i = 2, #list do
        local prev, cur = list[i - 1], list[i]
        if cur.who ~= prev.who then
            assert.is_nil(gone[cur.who], cur.who .. " ran again after losing the job")
            gone[prev.who] = true
            assert.is_true(cur.token > prev.token, "the new term's token is not higher")
        else
            assert.equal(prev.token, cur.token)
        end
    end
end

--- Who leads the job now, read from the store as any process can: the
-- leader's id ("TAG:PID", as the runs name it), or false.
local function leader_of(params)
    local target = params.target
    if target:find(",", 1, true) then
        local list = {}
        for url in target:gmatch("[^,]+") do list[#list + 1] = url end
        target = list
    end
    local store = assert(cmpxchg.open(target, params.db and { database = params.db } or nil))
    local who, err = store:election(params.name):leader()
    store:close()
    assert(who ~= nil, err)
    return who
end

--- A failure's message gets what the runs and the hosts' logs say (a CI
-- log shows only its end, and this spec's failures are rare): who ran the
-- job, from when and with which token, and the hosts' lines about the job.
local function with_context(log, hosts, body)
    local ok, e = pcall(body)
    if ok then return end
    local list, parts = runs(log), {}
    for i, r in ipairs(list) do
        if i == 1 or r.who ~= list[i - 1].who then
            parts[#parts + 1] = ("%s token %d from +%.2f s"):format(r.who, r.token,
                r.at - list[1].at)
        end
    end
    local lines = { "runs: " .. (#list > 0 and table.concat(parts, "; ") or "none")
        .. (" (%d in all)"):format(#list) }
    for _, h in ipairs(hosts) do
        local f = io.open(h.dir .. "/logs/error.log")
        for line in (f and f:lines() or function() end) do
            if #lines < 5 and (line:find("leader", 1, true) or line:find("%[emerg%]")) then
                lines[#lines + 1] = h.tag .. ": " .. line:sub(1, 240)
            end
        end
        if f then f:close() end
    end
    local context = table.concat(lines, "\n")
    if type(e) == "table" and e.message then       -- a luassert failure stays one
        local message = tostring(e.message)
        local first, rest = message:match("^([^\n]*)(.*)$")
        e.message = first .. "\n" .. context .. rest
    else
        e = tostring(e) .. "\n" .. context
    end
    error(e, 0)
end

local function wait_runs(log, pred, timeout, what)
    return helpers.wait_until(function()
        local list = runs(log)
        return pred(list) and list
    end, timeout, what)
end

--- The first run on host `tag` after `since` (epoch seconds), once one came.
local function first_run_on(log, tag, since, what)
    local list = wait_runs(log, function(l) return l[#l].tag == tag and l[#l].at > since end,
        TTL + RETRY + 20, what)
    for _, r in ipairs(list) do
        if r.tag == tag and r.at > since then return r end
    end
end

local backends = {
    { name = "embedded", params = function(dir)
        return { target = dir .. "/leader.db" }
    end },
    { name = "etcd cluster", params = function()
        local cluster = etcd_harness.cluster()
        return { target = table.concat(cluster.endpoints, ","), db = etcd_harness.fresh_prefix() }
    end },
}

describe("nginx leader job", function()
    local a, b = host("a"), host("b")

    teardown(function()
        for _, h in ipairs({ a, b }) do pcall(h.stop) end
        os.execute("rm -rf " .. q(BASE .. "-leader-a") .. " " .. q(BASE .. "-leader-b"))
    end)

    for _, backend in ipairs(backends) do
        it("runs one job on one of 4 workers of 2 hosts and moves it (" .. backend.name .. ")",
                function()
            a.start()
            b.start()
            local dir = helpers.sh("mktemp -d")
            local log = dir .. "/runs"
            with_context(log, { a, b }, function()
                local params = backend.params(dir)
                params.id, params.name, params.log = tostring(core.time()), "jobs/tick", log
                params.every, params.ttl, params.retry = EVERY, TTL, RETRY
                a.configure(params)
                b.configure(params)
                local hosts = { a = a, b = b }

                -- one leader, running every 0.2 s
                local list = wait_runs(log, function(l) return #l >= 5 end, 30, "the first runs")
                local first = list[1].who
                for i = 2, #list do assert.equal(first, list[i].who) end
                for i = 2, #list do
                    assert.is_true(list[i].at - list[i - 1].at < EVERY + 1, "runs too far apart")
                end

                -- its worker is SIGKILLed: another worker takes over
                local killed_at = core.time()
                helpers.kill(list[#list].pid, "KILL")
                list = wait_runs(log, function(l) return l[#l].who ~= first end, TTL + RETRY + 20,
                    "a run by another worker")
                local moved
                for _, r in ipairs(list) do
                    if r.who ~= first and r.at > killed_at then moved = moved or r end
                end
                local failover = moved.at - killed_at
                io.stderr:write(("\n[nginx leader job, %s] worker %s SIGKILLed: %s ran the job "
                    .. "%.2f s later"):format(backend.name, first, moved.who, failover))
                assert.is_true(failover <= TTL + RETRY + MARGIN, "failover took " .. failover)

                -- the whole host of the new leader is SIGKILLed: the other host takes over
                local second = moved
                local victim = hosts[second.tag]
                local other = victim == a and b or a
                killed_at = core.time()
                victim.kill()
                moved = first_run_on(log, other.tag, killed_at, "a run on the other host")
                failover = moved.at - killed_at
                io.stderr:write((", host %s SIGKILLed: %s ran it %.2f s later"):format(victim.tag,
                    moved.who, failover))
                assert.is_true(failover <= TTL + RETRY + MARGIN, "failover took " .. failover)

                -- the killed host comes back; then the leading host quits gracefully and
                -- resigns: the job moves back without waiting for the lease to end
                victim.start()
                victim.configure(params)
                local third = moved
                local quit_at = core.time()
                other.stop()
                -- nginx runs a quitting worker's timers (premature) before it exits,
                -- and the job's resigns: by now the quitting leader leads no more,
                -- though its last lease would run for 2/3 of the ttl at least
                local now_leads = leader_of(params)
                assert.are_not.equal(third.who, now_leads, "no resign on quit")
                moved = first_run_on(log, victim.tag, quit_at, "a run back on the restarted host")
                failover = moved.at - quit_at
                io.stderr:write((", host %s quit: %s ran it %.2f s later\n"):format(other.tag,
                    moved.who, failover))
                assert.is_true(moved.token > third.token)

                check_one_at_a_time(runs(log))
                victim.stop()
                for _, h in ipairs({ a, b }) do
                    local errors = {}
                    local f = io.open(h.dir .. "/logs/error.log")
                    for line in (f and f:lines() or function() end) do
                        -- (the master's alert about the worker killed is expected)
                        if line:find("leader_job", 1, true) or line:find("leader job", 1, true)
                                or line:find("%[emerg%]") then
                            errors[#errors + 1] = line
                        end
                    end
                    if f then f:close() end
                    assert.same({}, errors)
                end
            end)
            helpers.sh("rm -rf " .. q(dir))
        end)
    end
end)
