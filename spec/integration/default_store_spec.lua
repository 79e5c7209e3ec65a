-- Where a store file goes (lua/cmpxchg/target.lua, csrc/storedir.c): the default
-- file is made and checked the same way however its path reaches open (no target,
-- cmpxchg.default_path(), $CMPXCHG_URL, bin/cmpxchg); its place is refused, as ssh
-- refuses ~/.ssh, when another user could replace the store; any other path's
-- missing directory is named; host:port without a scheme is refused.
-- Each case runs in a child process with a HOME of its own.
local cmpxchg = require "cmpxchg"
local helpers = require "spec.helpers"

local q = helpers.shell_quote

local sh = helpers.sh

local function mode_of(path) return sh("stat -c %a " .. q(path)) end

--- Runs Lua `code` in a child with `env` (a string of VAR=value words): its
-- output (stdout and stderr) and exit code.
local function child(env, code)
    local setup = ("package.path='./lua/?.lua;./lua/?/init.lua;'..package.path;%s")
        :format(helpers.preload_core)
    local p = assert(helpers.popen(("env -u CMPXCHG_URL -u CMPXCHG_DATABASE -u XDG_STATE_HOME "
        .. "%s %s -e %s -e %s 2>&1"):format(env, helpers.lua, q(setup), q(code))))
    local out = p:read("*a")
    local _, _, status = helpers.pclose(p)
    return out, status
end

--- The ways of opening the default store, as Lua code printing "ok" or the error.
local WAYS = {
    ["no target"] = { "", "cmpxchg.open()" },
    ["cmpxchg.default_path()"] = { "", "cmpxchg.open(cmpxchg.default_path())" },
    ["$CMPXCHG_URL"] = { "CMPXCHG_URL=%s", "cmpxchg.open()" },
}

local function open_default(home, way, extra_env)
    local env_tpl, call = WAYS[way][1], WAYS[way][2]
    local path = home .. "/.local/state/cmpxchg/default.db"
    local env = ("HOME=%s %s %s"):format(q(home), env_tpl:format(q(path)), extra_env or "")
    return child(env, ([[
        local cmpxchg = require "cmpxchg"
        local st, err = %s
        if not st then print(err) os.exit(1) end
        assert(st:put("k", 1, 0))
        st:close()
        print("ok")
    ]]):format(call))
end

--- bin/cmpxchg list on the default store of `home`: output, exit code.
local function cli(home, args)
    local p = assert(helpers.popen(("env -u CMPXCHG_URL -u CMPXCHG_DATABASE -u XDG_STATE_HOME "
        .. "HOME=%s %s -e %s bin/cmpxchg %s 2>&1"):format(q(home), helpers.lua,
        q(helpers.preload_core), args or "list")))
    local out = p:read("*a")
    local _, _, status = helpers.pclose(p)
    return out, status
end

local homes = {}
local function fresh_home()
    local home = sh("mktemp -d")
    homes[#homes + 1] = home
    return home
end

describe("the default store", function()
    teardown(function()
        for _, home in ipairs(homes) do sh("rm -rf " .. q(home)) end
    end)

    for way in pairs(WAYS) do
        it("is created in a HOME that has no ~/.local/state, given as " .. way, function()
            local home = fresh_home()
            local out, status = open_default(home, way)
            assert.equal(0, status, out)
            assert.equal("ok\n", out)
            assert.equal("700", mode_of(home .. "/.local/state/cmpxchg"))
            assert.equal("700", mode_of(home .. "/.local"))
            assert.is_true(helpers.file_exists(home .. "/.local/state/cmpxchg/default.db"))
        end)
    end

    it("is found by bin/cmpxchg once made, which never creates it", function()
        local home = fresh_home()
        local out, status = cli(home)
        assert.equal(3, status, out)
        assert.matches("no store file", out)
        assert.is_false(helpers.file_exists(home .. "/.local/state/cmpxchg"))
        assert.equal("ok\n", (open_default(home, "no target")))
        out, status = cli(home)
        assert.equal(0, status, out)
        assert.equal("no locks\n", out)
    end)

    it("is $XDG_STATE_HOME/cmpxchg/default.db when that is set, checked up to it", function()
        local home, state = fresh_home(), fresh_home()
        local out, status = child(("HOME=%s XDG_STATE_HOME=%s"):format(q(home), q(state)), [[
            local cmpxchg = require "cmpxchg"
            print(cmpxchg.default_path())
            assert(cmpxchg.open())
        ]])
        assert.equal(0, status, out)
        assert.equal(state .. "/cmpxchg/default.db\n", out)
        sh("chmod 0777 " .. q(state))
        out, status = child(("HOME=%s XDG_STATE_HOME=%s"):format(q(home), q(state)), [[
            local cmpxchg = require "cmpxchg"
            print(select(2, cmpxchg.open()))
        ]])
        assert.equal(0, status, out)
        assert.matches(state .. " is writable by its group or others (mode 0777)", out, 1, true)
    end)

    it("has no location without an absolute HOME or XDG_STATE_HOME", function()
        local out = child("HOME=relative XDG_STATE_HOME=also-relative", [[
            local cmpxchg = require "cmpxchg"
            print(cmpxchg.default_path(), cmpxchg.open())
        ]])
        assert.equal("nil\tnil\tconnect: no default store location: set CMPXCHG_URL or HOME"
            .. "\tconnect\n", out)
    end)

    describe("is refused, every way it is given, when another user could replace it", function()
        --- A HOME whose default store exists, then `spoil` applied to it.
        local function spoiled(spoil)
            local home = fresh_home()
            assert.equal("ok\n", (open_default(home, "no target")))
            spoil(home, home .. "/.local/state/cmpxchg")
            return home
        end

        local function refused_everywhere(home, why)
            for way in pairs(WAYS) do
                local out, status = open_default(home, way)
                assert.equal(1, status, way .. ": " .. out)
                assert.truthy(out:find("connect: refusing the default store " .. home
                    .. "/.local/state/cmpxchg/default.db: " .. why, 1, true), way .. ": " .. out)
            end
            local out, status = cli(home)
            assert.equal(3, status, out)
            assert.truthy(out:find(why, 1, true), out)
        end

        it("a store directory that others can write", function()
            local home = spoiled(function(_, dir) sh("chmod 0777 " .. q(dir)) end)
            refused_everywhere(home, home .. "/.local/state/cmpxchg is writable by its group "
                .. "or others (mode 0777)")
        end)

        it("a parent directory up to HOME, and HOME itself, that others can write", function()
            local home = spoiled(function(h) sh("chmod 0775 " .. q(h .. "/.local")) end)
            refused_everywhere(home, home .. "/.local is writable by its group or others "
                .. "(mode 0775)")
            sh("chmod 0700 " .. q(home .. "/.local") .. " && chmod 1777 " .. q(home))
            refused_everywhere(home, home .. " is writable by its group or others (mode 1777)")
        end)

        it("a store directory that is a symbolic link", function()
            local elsewhere = fresh_home()
            local home = spoiled(function(_, dir)
                sh(("rm -rf %s && ln -s %s %s"):format(q(dir), q(elsewhere), q(dir)))
            end)
            refused_everywhere(home, home .. "/.local/state/cmpxchg is a symbolic link")
            assert.is_false(helpers.file_exists(elsewhere .. "/default.db"))
        end)

        it("a store file that is a symbolic link", function()
            local other = fresh_home() .. "/other.db"
            local home = spoiled(function(_, dir)
                sh(("rm %s/default.db* && ln -s %s %s/default.db"):format(q(dir), q(other), q(dir)))
            end)
            refused_everywhere(home, home .. "/.local/state/cmpxchg/default.db is a symbolic link")
            assert.is_false(helpers.file_exists(other))
        end)

        it("a directory or file owned by another user (needs root to arrange)", function()
            if sh("id -u") ~= "0" then
                pending("needs root: only root gives a file to another user (chown)")
                return
            end
            local home = spoiled(function(_, dir) sh("chown 65534 " .. q(dir)) end)
            local me = sh("id -u")
            refused_everywhere(home, ("%s/.local/state/cmpxchg is owned by uid 65534, not by "
                .. "you (uid %s) or root"):format(home, me))
            home = spoiled(function(_, dir) sh("chown 65534 " .. q(dir .. "/default.db")) end)
            refused_everywhere(home, ("%s/.local/state/cmpxchg/default.db is owned by uid "
                .. "65534"):format(home))
        end)
    end)
end)

describe("a store file elsewhere", function()
    it("whose directory is missing or not a directory: the error names it", function()
        local dir = sh("mktemp -d")
        local st, err, code = cmpxchg.open(dir .. "/missing/sub/x.db")
        assert.is_nil(st)
        assert.equal("connect", code)
        assert.equal(("connect: cannot open %s/missing/sub/x.db: directory "
            .. "%s/missing/sub does not exist (only the default store's directory is created)")
            :format(dir, dir), err)
        assert.is_false(helpers.file_exists(dir .. "/missing"))
        sh("touch " .. q(dir .. "/plain"))
        st, err = cmpxchg.open(dir .. "/plain/x.db")
        assert.is_nil(st)
        assert.equal(("connect: cannot open %s/plain/x.db: %s/plain is not a "
            .. "directory"):format(dir, dir), err)
        sh("rm -rf " .. q(dir))
    end)

    it("is never made from a server address without its scheme", function()
        local dir = sh("mktemp -d")
        for _, t in ipairs({ "localhost:8080", "ravendb.local:8080", "10.0.0.1:2379",
                             "[::1]:8080", "localhost:8080/db" }) do
            local ok, err = pcall(cmpxchg.open, t)
            assert.is_false(ok, t)
            assert.equal(("bad argument #1 to 'open' ('%s' looks like a server address "
                .. "without a scheme: write http://%s (or https://) for RavenDB, etcd://%s "
                .. "for etcd; a file of that name is ./%s)"):format(t, t, t, t),
                (err:gsub("^[^\n]-:%d+: ", "")))
            -- through $CMPXCHG_URL too
            local out, status = child("CMPXCHG_URL=" .. q(t), [[
                local cmpxchg = require "cmpxchg"
                print(pcall(cmpxchg.open))
            ]])
            assert.equal(0, status, out)
            assert.matches("^false\t.*looks like a server address without a scheme", out)
            assert.is_false(helpers.file_exists(t), t)
        end
        -- with a directory part it is a file, as the README says
        local out, status = child("", ("local dir = %q"):format(dir) .. [[
            local cmpxchg = require "cmpxchg"
            local st = assert(cmpxchg.open(dir .. "/localhost:8080"))
            st:close()
            print("ok")
        ]])
        assert.equal(0, status, out)
        assert.is_true(helpers.file_exists(dir .. "/localhost:8080"))
        local files = sh("ls " .. q(dir))
        assert.equal("localhost:8080", files)
        sh("rm -rf " .. q(dir))
    end)
end)
