-- The rock and the installs. The rockspecs and the Makefile build the same module;
-- `make rock` (a plain `luarocks make`), the .src.rock of `make dist` installed by
-- `luarocks install` with no server to fetch from, and `make install` each give a
-- library and a `cmpxchg` command that work from any directory, on the Lua they
-- were made for: the Lua running this spec (LuaJIT through the LuaRocks config the
-- README gives), and for `make install` Lua 5.3 as well.
-- Slow-ish: each install compiles the core (about 20 s in all on an idle machine).
local helpers = require "spec.helpers"

local q = helpers.shell_quote

local read, write = helpers.read_file, helpers.write_file

--- `cmd` (a shell command line, run without the ASan run's preload: the build
-- tools are not under test): its output and whether it succeeded.
local function run(cmd)
    local p = assert(helpers.popen("env -u LD_PRELOAD sh -c " .. q(cmd) .. " 2>&1"))
    local out = p:read("*a")
    return out, helpers.pclose(p) == true
end

local VERSION = require("cmpxchg")._VERSION:match("^cmpxchg (%S+)$")
local RELEASE = ("rockspec/lua-cmpxchg-%s-1.rockspec"):format(VERSION)
local SCM = "rockspec/lua-cmpxchg-scm-1.rockspec"

-- the Lua running the specs, as LuaRocks names it (LuaJIT: its 5.1)
local LUA_VERSION = helpers.sh(helpers.lua .. [[ -e 'io.write(_VERSION:match("%d+%.%d+"))']])
local IS_LUAJIT = helpers.sh(helpers.lua .. [[ -e 'io.write(tostring(jit ~= nil))']]) == "true"
local INTERPRETER = helpers.sh(helpers.lua
    .. [[ -e 'io.write(jit and jit.version or _VERSION)']])

local dirs = {}
local function tmpdir()
    local dir = helpers.sh("mktemp -d")
    dirs[#dirs + 1] = dir
    return dir
end

--- A LuaRocks config in a fresh HOME that knows no server (nothing can be
-- fetched: a dependency that is not there fails the install) and, under
-- LuaJIT, the README's settings for it. The environment to run luarocks in.
local function luarocks_env()
    local home = tmpdir()
    local config = "rocks_servers = {}\n"
    if IS_LUAJIT then
        config = config .. assert(read("README.md"):match("```lua\n(%-%- luajit%.lua:.-)```"),
            "the README's LuaRocks config for LuaJIT")
    end
    write(home .. "/config.lua", config)
    return ("HOME=%s LUAROCKS_CONFIG=%s"):format(q(home), q(home .. "/config.lua"))
end

--- Checks a tree T made by LuaRocks: from another directory, the library
-- works under this Lua and T/bin/cmpxchg runs on it.
local function works_from_elsewhere(tree)
    local code = ([[
        package.path = "%s/share/lua/%s/?.lua;%s/share/lua/%s/?/init.lua;" .. package.path
        package.cpath = "%s/lib/lua/%s/?.so;" .. package.cpath
        local cmpxchg = require "cmpxchg"
        local st = assert(cmpxchg.open("store.db"))
        assert(st:put("k", 1, 0))
        assert(st:lock("k2", { owner = "me" }))
        assert(st:close())
        io.write("works")
    ]]):format(tree, LUA_VERSION, tree, LUA_VERSION, tree, LUA_VERSION)
    local elsewhere = tmpdir()
    local out, ok = run(("cd %s && %s -e %s"):format(q(elsewhere), helpers.lua, q(code)))
    assert.is_true(ok, out)
    assert.equal("works", out)
    out, ok = run(("cd %s && %s/bin/cmpxchg --version"):format(q(elsewhere), q(tree)))
    assert.is_true(ok, out)
    assert.equal(("%s (%s)\n"):format(require("cmpxchg")._VERSION, INTERPRETER), out)
    out, ok = run(("cd %s && %s/bin/cmpxchg --url store.db list"):format(q(elsewhere), q(tree)))
    assert.is_true(ok, out)
    assert.matches("^KEY +OWNER.*\nk2 +me ", out)
end

describe("the rock", function()
    teardown(function()
        for _, dir in ipairs(dirs) do os.execute("rm -rf " .. q(dir)) end
    end)

    it("rockspecs list every Lua module and every C source the Makefile builds", function()
        local makefile = read("Makefile"):gsub("\\\n", " ")
        local sources = assert(makefile:match("\nSOURCES = ([^\n]+)"))
        for _, spec in ipairs({ SCM, RELEASE }) do
            local rockspec = read(spec)
            local p = assert(io.popen("find lua/cmpxchg -name '*.lua'"))
            for file in p:lines() do
                assert.truthy(rockspec:find('"' .. file .. '"', 1, true), spec .. ": " .. file)
            end
            p:close()
            for file in sources:gmatch("%S+") do
                assert.truthy(rockspec:find('"' .. file .. '"', 1, true), spec .. ": " .. file)
            end
        end
    end)

    it("has a release rockspec for cmpxchg._VERSION, the scm one's but for version and source",
        function()
        local release = read(RELEASE)
        assert.matches('\nversion = "' .. VERSION:gsub("%p", "%%%0") .. '%-1"\n', release)
        local function body(s) return s:match("\ndescription = {.*$") end
        assert.equal(body(read(SCM)), body(release))
    end)

    it("builds with a plain luarocks make (make rock), and works from elsewhere", function()
        local tree = tmpdir()
        local out, ok = run(("%s make --no-print-directory rock ROCK_TREE=%s LUA_VERSION=%s")
            :format(luarocks_env(), q(tree), LUA_VERSION))
        assert.is_true(ok, out)
        works_from_elsewhere(tree)
    end)

    it("is written by make dist and installs offline with luarocks install", function()
        local dist, tree = tmpdir(), tmpdir()
        local out, ok = run(("make --no-print-directory dist DIST_DIR=%s"):format(q(dist)))
        assert.is_true(ok, out)
        local rock = ("lua-cmpxchg-%s-1.src.rock"):format(VERSION)
        assert.equal(dist .. "/" .. rock .. "\n", out)
        out, ok = run(("cd %s && %s luarocks --lua-version=%s install ./%s --tree %s")
            :format(q(dist), luarocks_env(), LUA_VERSION, rock, q(tree)))
        assert.is_true(ok, out)
        works_from_elsewhere(tree)
    end)
end)

describe("make install", function()
    teardown(function()
        for _, dir in ipairs(dirs) do os.execute("rm -rf " .. q(dir)) end
    end)

    it("for another Lua (5.3) builds the core for it, and its command runs on it", function()
        local dest = tmpdir()
        local out, ok = run(("make --no-print-directory install LUA_VERSION=5.3 PREFIX=/usr "
            .. "DESTDIR=%s"):format(q(dest)))
        assert.is_true(ok, out)
        local env = ("LUA_PATH_5_3=%s LUA_CPATH_5_3=%s"):format(
            q(("%s/usr/share/lua/5.3/?.lua;%s/usr/share/lua/5.3/?/init.lua;;"):format(dest, dest)),
            q(dest .. "/usr/lib/lua/5.3/?.so;;"))
        local code = ([[
            local cmpxchg = require "cmpxchg"
            assert(package.searchpath("cmpxchg.core", package.cpath):find(%q, 1, true))
            local st = assert(cmpxchg.open(":memory:"))
            assert(st:put("k", 1, 0))
            io.write("works")
        ]]):format(dest)
        out, ok = run(("cd / && %s lua5.3 -e %s"):format(env, q(code)))
        assert.is_true(ok, out)
        assert.equal("works", out)
        local bin = dest .. "/usr/bin/cmpxchg"
        assert.equal("#!/usr/bin/env lua5.3", read(bin):match("^[^\n]*"))
        out, ok = run(("cd / && %s %s --version"):format(env, q(bin)))
        assert.is_true(ok, out)
        assert.equal(require("cmpxchg")._VERSION .. " (Lua 5.3)\n", out)
    end)

    it("refuses a Lua whose headers are not there, saying so", function()
        local dest = tmpdir()
        local out, ok = run(("make --no-print-directory install LUA_VERSION=9.9 DESTDIR=%s")
            :format(q(dest)))
        assert.is_false(ok, out)
        assert.matches("make install: no headers for lua9.9 (pkg-config lua9.9): install them "
            .. "(Debian: liblua9.9-dev) or give LUA_INCDIR", out, 1, true)
        assert.equal("", helpers.sh("ls -A " .. q(dest)))
    end)
end)
