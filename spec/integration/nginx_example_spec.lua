-- examples/nginx runs as its README says (examples/nginx/run on a free port, the
-- embedded store in its prefix) and answers as documented: the printer is held by
-- one job at a time, a busy printer is 503, a duplicate email is 409, /locks shows
-- the printer's holder while it prints.
local cjson = require "cjson"
local core = require "cmpxchg.core"
local helpers = require "spec.helpers"

if os.getenv("CMPXCHG_SKIP_NGINX") == "1" then
    describe("examples/nginx", function()
        pending("runs in the plain pass only (nginx loads the uninstrumented LuaJIT build)")
    end)
    return
end

describe("examples/nginx", function()
    local prefix = os.tmpname()
    os.remove(prefix)
    local port = helpers.sh([[node -e 'const s = require("net").createServer();
        s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });']])
    local env = ("PORT=%s EXAMPLE_PREFIX=%s "):format(port, helpers.shell_quote(prefix))
    local base = "http://127.0.0.1:" .. port
    local http = core.http_new()

    local function call(method, path, timeout)
        local status, body = http:request(method, base .. path, nil, nil, timeout or 30)
        assert(status, body)
        return status, cjson.decode(body)
    end

    setup(function() helpers.sh(env .. "examples/nginx/run start") end)

    teardown(function()
        helpers.sh(env .. "examples/nginx/run stop")
        helpers.sh("rm -rf " .. helpers.shell_quote(prefix))
    end)

    it("prints one job at a time, answers 503 when busy, and shows the holder", function()
        -- a long job in the background (curl), then what others see meanwhile
        local job = assert(io.popen(("curl -s -X POST --max-time 30 '%s/printers/p1/print?work=1.5'")
            :format(base)))
        local locks = helpers.wait_until(function()
            local _, r = call("GET", "/locks?prefix=printers/")
            return #r.locks > 0 and r.locks
        end, 10, "the first job's reservation")
        assert.equal("printers/p1", locks[1].key)
        assert.is_false(locks[1].expired)
        assert.is_true(locks[1].remaining > 0)
        local status, busy = call("POST", "/printers/p1/print?work=0&wait=0")
        assert.equal(503, status)
        assert.equal(1, busy.error:find("timeout: lock 'printers/p1' is held by " .. locks[1].owner,
            1, true), busy.error)
        -- a job that waits gets the printer after the first one
        local status2, second = call("POST", "/printers/p1/print?work=0.1&wait=10")
        local first = cjson.decode(job:read("*a"))
        job:close()
        assert.equal(200, status2)
        assert.equal("p1", first.printed)
        assert.equal("p1", second.printed)
        assert.is_true(second.token > first.token)
        assert.is_true(second.waited > 0.5, "the second job waited for the first")
        local _, after = call("GET", "/locks?prefix=printers/")
        assert.same({}, after.locks)
    end)

    it("reserves an email once: 201, then 409 for anyone else", function()
        local status, r = call("POST", "/users?id=ann&email=Ann@Example.org")
        assert.equal(201, status)
        assert.equal("ann", r.user)
        status, r = call("POST", "/users?id=bob&email=ann@example.org")    -- case-insensitive
        assert.equal(409, status)
        assert.equal("ann@example.org is already reserved by user ann", r.error)
        -- an existing user id gives its new address back
        status = call("POST", "/users?id=ann&email=other@example.org")
        assert.equal(409, status)
        status = call("POST", "/users?id=carl&email=other@example.org")
        assert.equal(201, status)
    end)
end)
