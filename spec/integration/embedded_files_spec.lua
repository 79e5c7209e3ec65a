-- What the embedded store does to the file it is given: another application's
-- SQLite file is refused before anything in it changes (not switched to WAL
-- first), whether it is reached directly, through bin/cmpxchg or through a
-- symbolic link; a name is a file name, never a SQLite URI ("file:..."); the
-- core's own options are read safely.
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"
local helpers = require "spec.helpers"

local q = helpers.shell_quote

local function sqlite3(path, sql)
    return helpers.sh(("sqlite3 %s %s"):format(q(path), q(sql)))
end

local function slurp(path)
    local f = assert(io.open(path, "rb"))
    local data = f:read("*a")
    f:close()
    return data
end

--- A directory of its own, removed by the returned function.
local function tmpdir()
    local dir = os.tmpname()
    os.remove(dir)
    helpers.sh("mkdir -m 700 " .. q(dir))
    return dir, function() helpers.sh("rm -rf " .. q(dir)) end
end

describe("another application's SQLite file", function()
    local dir, remove, foreign

    before_each(function()
        dir, remove = tmpdir()
        foreign = dir .. "/invoices.db"
        sqlite3(foreign, "CREATE TABLE invoices (id INTEGER); INSERT INTO invoices VALUES (7);")
    end)
    after_each(function() remove() end)

    --- Asserts that `foreign` is exactly as made: same bytes, still in its
    -- rollback-journal mode, no WAL files beside it.
    local function untouched(before)
        assert.equal(before, slurp(foreign))
        assert.equal("delete", sqlite3(foreign, "PRAGMA journal_mode"))
        assert.is_false(helpers.file_exists(foreign .. "-wal"))
        assert.is_false(helpers.file_exists(foreign .. "-shm"))
        assert.equal("7", sqlite3(foreign, "SELECT id FROM invoices"))
    end

    local function refused(s, err, code)
        assert.is_nil(s)
        assert.equal("connect", code)
        assert.matches("is a SQLite database of another application", err)
    end

    it("is refused before anything in it changes", function()
        local before = slurp(foreign)
        refused(cmpxchg.open(foreign))
        refused(cmpxchg.open(foreign, { database = "ns", sync = "full" }))
        refused(core.embedded_open(foreign))
        untouched(before)
    end)

    it("is refused so when it is marked with another application_id", function()
        sqlite3(foreign, "PRAGMA application_id = 42")
        local before = slurp(foreign)
        refused(cmpxchg.open(foreign))
        untouched(before)
    end)

    it("is refused so through a symbolic link", function()
        local link = dir .. "/store.db"
        helpers.sh(("ln -s %s %s"):format(q(foreign), q(link)))
        local before = slurp(foreign)
        refused(cmpxchg.open(link))
        untouched(before)
    end)

    it("is refused so by bin/cmpxchg", function()
        local before = slurp(foreign)
        local p = assert(helpers.popen(("env -u CMPXCHG_URL -u CMPXCHG_DATABASE %s -e %s "
            .. "bin/cmpxchg --url %s list 2>&1"):format(helpers.lua, q(helpers.preload_core),
            q(foreign))))
        local out = p:read("*a")
        local _, _, code = helpers.pclose(p)
        assert.equal(3, code, out)
        assert.matches("is a SQLite database of another application", out)
        untouched(before)
    end)
end)

describe("an embedded store's name", function()
    local dir, remove

    before_each(function() dir, remove = tmpdir() end)
    after_each(function() remove() end)

    it("that starts with file: is not read as a SQLite URI", function()
        -- as a URI this is a private in-memory database (the open worked);
        -- as a file name it is in a directory "file:" that does not exist
        local s, err, code = cmpxchg.open("file:" .. dir .. "/x.db?mode=memory")
        assert.is_nil(s)
        assert.equal("connect", code)
        assert.matches("^connect: cannot open file:", err)
        s, err, code = cmpxchg.open("file:" .. dir .. "/x.db?nolock=1")
        assert.is_nil(s)
        assert.equal("connect", code)
        assert.matches("^connect: cannot open file:", err)
    end)

    --- Runs Lua `code` in a child process whose working directory is `dir`
    -- (a name that starts with file: is relative to it): its output.
    local function in_dir(code)
        local root = helpers.sh("pwd")
        local cpath = helpers.cpath:gsub("[^;]+", function(p)
            return p:sub(1, 1) == "/" and p or root .. "/" .. p
        end)
        local setup = ([[
            package.path = %q .. package.path
            package.cpath = %q .. package.cpath
        ]]):format(root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;", cpath .. ";")
        local p = assert(helpers.popen(("cd %s && %s -e %s -e %s 2>&1"):format(q(dir),
            helpers.lua, q(setup), q(code))))
        local out = p:read("*a")
        assert.is_true(helpers.pclose(p), out)
        return out
    end

    it("that starts with file: names a file, shared by every handle on it", function()
        local out = in_dir([[
            local cmpxchg = require "cmpxchg"
            local name = "file:shared.db?mode=memory"
            local a = assert(cmpxchg.open(name))
            local b = assert(cmpxchg.open(name))
            assert(a:put("k", "seen", 0))
            print(b:get("k"))
            a:close() b:close()
        ]])
        assert.matches("^seen\t%d+\n$", out)
        assert.is_true(helpers.file_exists(dir .. "/file:shared.db?mode=memory"))
    end)

    it("that starts with file: is the file the renewal thread writes too", function()
        -- as a URI, the thread's own connection opened an empty in-memory
        -- database and the lock was lost at its first renewal
        local out = in_dir([[
            local cmpxchg = require "cmpxchg"
            local core = require "cmpxchg.core"
            local st = assert(cmpxchg.open("file:renew.db?mode=memory"))
            local l = assert(st:lock("k", { ttl = 1, auto_renew = true }))
            local first = l:token()
            local deadline = core.monotime() + 30
            while l:token() == first and l:is_held() and core.monotime() < deadline do
                core.sleep(0.01)
            end
            local other = assert(cmpxchg.open("file:renew.db?mode=memory"))
            print(l:token() > first, l:is_held(), select(2, other:get("k")) == l:token())
            assert(l:release())
            st:close() other:close()
        ]])
        assert.equal("true\ttrue\ttrue\n", out)
    end)

    it("may be given with a namespace that is a number", function()
        -- the number's string was popped before it was copied: a use-after-free
        -- (seen by the allocation-failure checker, spec/core/alloc_failure_spec.lua)
        local path = dir .. "/n.db"
        local h = assert(core.embedded_open(path, { namespace = 4321 }))
        local ok, index = h:put("k", '"v"', 0)
        assert.is_true(ok)
        h:close()
        local st = assert(cmpxchg.open(path, { database = "4321" }))
        assert.same({ "v", index }, { st:get("k") })
        st:close()
        assert.has_error(function() core.embedded_open(path, { namespace = {} }) end,
            "bad argument #2 to 'embedded_open' (namespace must be a string)")
    end)
end)
