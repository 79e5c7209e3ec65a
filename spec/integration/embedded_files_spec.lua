-- What the embedded store does to the file it is given: another application's
-- SQLite file is refused before anything in it changes (not switched to WAL
-- first), whether it is reached directly, through bin/cmpxchg or through a
-- symbolic link.
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
