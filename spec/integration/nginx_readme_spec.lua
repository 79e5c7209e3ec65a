-- The README's nginx set-up, copied as a user copies it: its nginx.conf and app.lua
-- taken out of README.md, with only the placeholders it names filled in (this
-- checkout, the app's directory, a free port instead of 8080) and its store given by
-- $CMPXCHG_URL (the test etcd cluster), started as the README says, must serve.
local core = require "cmpxchg.core"
local etcd_harness = require "spec.support.etcd_harness"
local helpers = require "spec.helpers"

local q = helpers.shell_quote

if os.getenv("CMPXCHG_SKIP_NGINX") == "1" then
    describe("the README's nginx set-up", function()
        pending("runs in the plain pass only (nginx loads the uninstrumented LuaJIT build)")
    end)
    return
end

local read, write = helpers.read_file, helpers.write_file

local function free_port()
    return helpers.sh([[node -e 'const s = require("net").createServer();
        s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });']])
end

describe("the README's nginx set-up", function()
    local app, master

    teardown(function()
        if master then
            helpers.kill(master, "QUIT")
            pcall(helpers.wait_until, function() return helpers.proc_state(master) == nil end,
                20, "nginx to exit")
            if helpers.proc_state(master) then helpers.kill(master, "KILL") end
        end
        if app then helpers.sh("rm -rf " .. q(app)) end
    end)

    it("serves when copied as written", function()
        local readme = read("README.md")
        local conf = assert(readme:match("```nginx\n(# nginx%.conf:.-)```"), "the nginx.conf block")
        local lua = assert(readme:match("```lua\n(%-%- app%.lua:.-)```"), "the app.lua block")
        local root = helpers.sh("pwd")
        -- the workers (nobody, when root starts nginx) read the app's directory
        app = helpers.sh("mktemp -d")
        helpers.sh(("chmod 0755 %s && mkdir -p %s/tmp"):format(q(app), q(app)))
        local port = free_port()
        local function fill(text)
            return (text:gsub("/path/to/cmpxchg", root):gsub("/path/to/app", app)
                :gsub("127%.0%.0%.1:8080", "127.0.0.1:" .. port))
        end
        write(app .. "/nginx.conf", fill(conf))
        write(app .. "/app.lua", lua)
        helpers.sh("make --no-print-directory BUILD=build/luajit LUA_PC=luajit all")
        local cluster = etcd_harness.cluster("plain")
        -- as the README starts it (in the foreground: here a session of its own)
        helpers.sh("sh -c " .. q(("cd %s && CMPXCHG_URL=%s setsid nginx -p %s -c nginx.conf "
            .. "</dev/null >%s/nginx.log 2>&1 &"):format(q(app), q(cluster.endpoints[1]), q(app),
            q(app))))
        master = helpers.wait_until(function()
            local f = io.open(app .. "/nginx.pid")
            local pid = f and tonumber(f:read("*a"))
            if f then f:close() end
            return pid
        end, 20, "nginx's pid file (log: " .. app .. "/nginx.log)")
        local http = core.http_new()
        local body
        local status = helpers.wait_until(function()
            local s, b = http:request("GET", ("http://127.0.0.1:%s/print?job=report"):format(port),
                nil, nil, 30)
            body = b
            return s
        end, 20, "nginx to answer")
        assert.equal(200, status, body .. read(app .. "/nginx.log"))
        assert.equal("printed report\n", body)
        -- the lock was released
        local cmpxchg = require "cmpxchg"
        local st = assert(cmpxchg.open(cluster.endpoints[1], { database = "app" }))
        assert.same({ nil, 0 }, { st:get("printers/first-floor") })
        st:close()
    end)
end)
