-- `make demo` as a new user meets it: it installs only what the demo needs (the
-- build, Lua 5.4, lua-cjson, the SQLite and libcurl headers; never the tests'
-- servers nor their npm referee), and runs in a HOME that has never seen the
-- project (its default store and that store's directory are created).
local helpers = require "spec.helpers"

local q = helpers.shell_quote

--- `cmd` run as a user's shell would (none of the test run's LUA, preload or
-- store settings): output and exit code.
local function run(cmd)
    local p = assert(helpers.popen("env -u LD_PRELOAD -u LUA -u CMPXCHG_URL -u CMPXCHG_DATABASE "
        .. "-u XDG_STATE_HOME sh -c " .. q(cmd) .. " 2>&1"))
    local out = p:read("*a")
    local _, _, code = helpers.pclose(p)
    return out, code
end

local function set(words)
    local s = {}
    for w in words:gmatch("%S+") do s[w] = true end
    return s
end

local DEMO = set("gcc make pkg-config lua5.4 liblua5.4-dev lua-cjson libsqlite3-dev "
    .. "libcurl4-openssl-dev")

describe("make demo", function()
    it("installs the demo's profile of scripts/install-deps only", function()
        local out, code = run("make -n --no-print-directory demo")
        assert.equal(0, code, out)
        assert.truthy(out:find("scripts/install-deps demo\n", 1, true), out)
        assert.is_nil(out:find("npm", 1, true), out)
        assert.is_nil(out:find("install-deps test", 1, true), out)
        assert.is_nil(out:find("install-deps\n", 1, true), out)
    end)

    it("whose packages are the build's, Lua 5.4's, lua-cjson and two headers: no referee",
        function()
        local out, code = run("scripts/install-deps demo --dry-run")
        assert.equal(0, code, out)
        assert.same(DEMO, set(assert(out:match("^packages: ([^\n]*)\n"), out)))
        assert.matches("\nreferee: none\n$", out)
        -- the tests' profile has those and the servers, and the referee when it is missing
        out, code = run("scripts/install-deps test --dry-run")
        assert.equal(0, code, out)
        local test = set(assert(out:match("^packages: ([^\n]*)\n"), out))
        for p in pairs(DEMO) do assert.is_true(test[p], p) end
        for _, p in ipairs({ "etcd-server", "nginx-core", "nodejs", "lua-busted", "luarocks" }) do
            assert.is_true(test[p], p)
        end
        assert.matches("\nreferee: [%w ]+\n$", out)
        out, code = run("scripts/install-deps frobnicate")
        assert.equal(2, code, out)
    end)

    it("runs in a HOME that has no ~/.local/state", function()
        local home = helpers.sh("mktemp -d")
        local out, code = run(("HOME=%s make --no-print-directory demo"):format(q(home)))
        assert.equal(0, code, out)
        assert.matches("\nResult: OK, zero overlaps\n$", out)
        assert.is_true(helpers.file_exists(home .. "/.local/state/cmpxchg/default.db"))
        helpers.sh("rm -rf " .. q(home))
    end)
end)
