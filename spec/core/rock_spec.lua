-- The rockspec and the Makefile build the same module: every Lua file and C
-- source is in the rockspec, and `luarocks make` gives a working install.
local helpers = require "spec.helpers"

local function read(path)
    local f = assert(io.open(path))
    local s = f:read("*a")
    f:close()
    return s
end

describe("rockspec", function()
    local rockspec = read("rockspec/lua-cmpxchg-scm-1.rockspec")

    it("lists every Lua module and every C source the Makefile builds", function()
        local p = assert(io.popen("find lua/cmpxchg -name '*.lua'"))
        for file in p:lines() do
            assert.truthy(rockspec:find('"' .. file .. '"', 1, true), file .. " missing")
        end
        p:close()
        local sources = read("Makefile"):match("SOURCES = ([^\n]+)")
        for file in sources:gmatch("%S+") do
            assert.truthy(rockspec:find('"' .. file .. '"', 1, true), file .. " missing")
        end
    end)

    it("builds with luarocks make and the installed module works", function()
        local tree = os.tmpname()
        os.remove(tree)
        -- for the Lua running the specs (LuaJIT: luarocks' 5.1); without the ASan
        -- run's preload: the build tools are not under test
        local version = _VERSION:match("%d+%.%d+")
        local p = helpers.popen(("env -u LD_PRELOAD make --no-print-directory rock ROCK_TREE=%s "
            .. "LUA_VERSION=%s 2>&1"):format(helpers.shell_quote(tree), version))
        local out = p:read("*a")
        assert.is_true(helpers.pclose(p), out)
        local check = ("%s -e %s"):format(helpers.lua, helpers.shell_quote(([[
            package.path = "%s/share/lua/%s/?.lua;%s/share/lua/%s/?/init.lua;" .. package.path
            package.cpath = "%s/lib/lua/%s/?.so;" .. package.cpath
            local cmpxchg = require "cmpxchg"
            local searchpath = package.searchpath or function(name, path)     -- not in 5.1
                for template in path:gmatch("[^;]+") do
                    local file = template:gsub("%%?", (name:gsub("%%.", "/")))
                    local f = io.open(file)
                    if f then f:close() return file end
                end
            end
            assert(searchpath("cmpxchg.core", package.cpath):find("%s", 1, true))
            local st = assert(cmpxchg.open(":memory:"))
            assert(st:put("k", 1, 0))
            local l = assert(st:lock("k2"))
            assert(l:release())
            io.write("works")
        ]]):format(tree, version, tree, version, tree, version, tree)))
        local q = io.popen(check .. " 2>&1")
        local result = q:read("*a")
        q:close()
        os.execute("rm -rf " .. helpers.shell_quote(tree))
        assert.equal("works", result)
    end)
end)
