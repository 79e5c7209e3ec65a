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

describe("examples/nginx/run from a checkout its workers cannot read", function()
    it("fails at start, saying why, instead of serving 500s", function()
        if helpers.sh("id -u") ~= "0" then
            pending("needs root: only nginx started by root runs its workers as another user")
            return
        end
        -- a copy of the checkout in a private directory, as a checkout under /root is
        local private = helpers.sh("mktemp -d")
        local copy = private .. "/cmpxchg"
        helpers.sh(("mkdir -p %s/build && cp -Rp Makefile csrc lua examples %s/ && "
            .. "cp -Rp build/luajit %s/build/"):format(helpers.shell_quote(copy),
            helpers.shell_quote(copy), helpers.shell_quote(copy)))
        local prefix = os.tmpname()
        os.remove(prefix)
        local port = helpers.sh([[node -e 'const s = require("net").createServer();
            s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });']])
        local p = assert(helpers.popen(("env -u LD_PRELOAD PORT=%s EXAMPLE_PREFIX=%s %s/examples/nginx/run "
            .. "start 2>&1"):format(port, helpers.shell_quote(prefix), helpers.shell_quote(copy))))
        local out = p:read("*a")
        local ok, _, code = helpers.pclose(p)
        -- whatever happened, no nginx is left behind
        os.execute(("env PORT=%s EXAMPLE_PREFIX=%s %s/examples/nginx/run stop >/dev/null 2>&1")
            :format(port, helpers.shell_quote(prefix), helpers.shell_quote(copy)))
        helpers.sh("rm -rf " .. helpers.shell_quote(private) .. " " .. helpers.shell_quote(prefix))
        assert.is_nil(ok, out)
        assert.equal(1, code, out)
        assert.equal(("run: nginx started by root runs its workers as nobody, who cannot read "
            .. "%s/lua/cmpxchg/init.lua (every request would fail with 500): put the checkout "
            .. "where nobody can read it (/opt, /srv; /root is private), or run this as another "
            .. "user\n"):format(copy), out)
    end)
end)
