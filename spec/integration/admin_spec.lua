-- The operator view on the embedded store: cmpxchg.admin (which items are
-- locks, whose, until when; breaking one by CAS on the index seen) and the
-- bin/cmpxchg command over it.
local cmpxchg = require "cmpxchg"
local admin = require "cmpxchg.admin"
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"
local runtime = require "cmpxchg.runtime"
local store = require "cmpxchg.store"
local helpers = require "spec.helpers"

local q = helpers.shell_quote

--- Writes a lease that ended `ago` seconds ago, as a holder that died would
-- leave it. Returns its index.
local function abandoned(st, key, field, ago)
    local ok, index = st:put(key, { [field or "ExpiresAt"] = core.format_time(core.time() - ago),
                                    Owner = "ghost", Host = "gone-host", Pid = 99 }, 0)
    assert.is_true(ok)
    return index
end

local function by_key(locks)
    local map = {}
    for _, d in ipairs(locks) do map[d.key] = d end
    return map
end

describe("operator view (embedded)", function()
    local path, st

    before_each(function()
        path = helpers.tmpdb()
        st = assert(cmpxchg.open(path))
    end)
    after_each(function()
        st:close()
        helpers.cleanup()
    end)

    describe("admin.locks", function()
        it("lists our locks with owner, host, pid, token and the lease left", function()
            local l = assert(st:lock("locks/a", { ttl = 60, owner = "alice" }))
            local locks = assert(admin.locks(st, "locks/"))
            assert.equal(1, #locks)
            local d = locks[1]
            assert.equal("locks/a", d.key)
            assert.equal(l:token(), d.token)
            assert.equal("alice", d.owner)
            assert.equal(runtime.hostname, d.host)
            assert.equal(runtime.pid(), d.pid)
            assert.equal("ExpiresAt", d.field)
            assert.is_false(d.expired)
            assert.near(l:valid_until(), d.expires_at, 0.001)
            assert.is_true(d.remaining > 50 and d.remaining <= 60, tostring(d.remaining))
            assert.equal("alice", d.value.Owner)
            assert.is_true((l:release()))
        end)

        it("reads ExpiresAt, ReservedUntil and opts.expires_field, in key order", function()
            assert(st:lock("b/ours", { ttl = 60 }))
            assert(st:lock("a/printer", { ttl = 60, expires_field = "ReservedUntil" }))
            assert(st:lock("c/custom", { ttl = 60, expires_field = "LeaseEnd" }))
            local keys = {}
            for _, d in ipairs(assert(admin.locks(st, ""))) do keys[#keys + 1] = d.key end
            assert.same({ "a/printer", "b/ours" }, keys)
            local locks = by_key(assert(admin.locks(st, "", { expires_field = "LeaseEnd" })))
            assert.equal("ReservedUntil", locks["a/printer"].field)
            assert.equal("ExpiresAt", locks["b/ours"].field)
            assert.equal("LeaseEnd", locks["c/custom"].field)
        end)

        it("leaves out values that are not locks and keys outside the prefix", function()
            local values = { "text", 42, true, cmpxchg.null, { 1, 2 }, { Name = "Ada" },
                             { ExpiresAt = "not a date" }, { ExpiresAt = 1795501182 },
                             { ReservedUntil = false } }
            for i, v in ipairs(values) do assert.is_true((st:put("locks/v" .. i, v, 0))) end
            assert(st:lock("locks/real", { ttl = 60 }))
            assert(st:lock("other/real", { ttl = 60 }))
            local locks = assert(admin.locks(st, "locks/"))
            assert.equal(1, #locks)
            assert.equal("locks/real", locks[1].key)
        end)

        it("shows an abandoned lease as expired, with the time since as negative", function()
            local index = abandoned(st, "locks/stale", "ExpiresAt", 5)
            local d = assert(admin.locks(st, "locks/"))[1]
            assert.equal(index, d.token)
            assert.is_true(d.expired)
            assert.is_true(d.remaining <= -5 and d.remaining > -10, tostring(d.remaining))
            assert.same({ "ghost", "gone-host", 99 }, { d.owner, d.host, d.pid })
        end)

        it("raises on misuse", function()
            assert.has_error(function() admin.locks("x", "") end,
                "bad argument #1 to 'locks' (cmpxchg.Store expected, got string)")
            assert.has_error(function() admin.locks(st, 42) end,
                "bad argument #2 to 'locks' (string expected, got number)")
            assert.has_error(function() admin.locks(st, "", { expires_field = "" }) end,
                "bad argument #3 to 'locks' (expires_field must be a non-empty string)")
            assert.has_error(function() admin.break_lock(st, " ", 1) end,
                "bad argument #2 to 'break_lock' (key must not be empty or blank)")
            assert.has_error(function() admin.break_lock(st, "k", 0) end,
                "bad argument #3 to 'break_lock' (index must be positive)")
            local closed = assert(cmpxchg.open(":memory:"))
            closed:close()
            assert.has_error(function() admin.locks(closed, "") end,
                "attempt to use a closed store")
        end)

        it("returns a store failure as nil, err, code", function()
            local failing = store.new({
                list = function() return nil, "io: disk I/O error", "io" end,
                delete = function() return nil, "timeout: no answer", "timeout" end,
                close = function() end,
            })
            assert.same({ nil, "io: disk I/O error", "io" }, { admin.locks(failing, "") })
            assert.same({ nil, "timeout: no answer", "timeout" },
                { admin.break_lock(failing, "k", 7) })
        end)
    end)

    describe("admin.break_lock", function()
        it("removes the lock at the index the operator saw", function()
            abandoned(st, "locks/stale", "ExpiresAt", 5)
            local seen = assert(admin.locks(st, "locks/"))[1]
            assert.same({ true }, { admin.break_lock(st, seen.key, seen.token) })
            assert.same({ nil, 0 }, { st:get("locks/stale") })
        end)

        it("refuses when someone took the lock over meanwhile: the index moved", function()
            abandoned(st, "locks/stale", "ExpiresAt", 5)
            local seen = assert(admin.locks(st, "locks/"))[1]
            local l = assert(st:lock("locks/stale", { timeout = 0, owner = "bob" }))
            assert.equal(1, l.takeovers)
            local ok, err, current = admin.break_lock(st, "locks/stale", seen.token)
            assert.is_false(ok)
            assert.matches("^changed: lock 'locks/stale' is now at index %d+", err)
            assert.equal(l:token(), current)
            assert.equal("bob", (st:get("locks/stale")).Owner)
            assert.is_true((l:release()))
            assert.same({ false, "changed: lock 'locks/stale' is gone (it was at index "
                .. l:token() .. ")", 0 }, { admin.break_lock(st, "locks/stale", l:token()) })
        end)
    end)

    describe("bin/cmpxchg", function()
        --- Runs the command from the checkout: its output (stdout and stderr)
        -- and exit code. Inherited CMPXCHG_* settings are dropped unless given.
        local function run(args, env)
            local p = assert(helpers.popen(("env -u CMPXCHG_URL -u CMPXCHG_DATABASE %s %s -e %s bin/cmpxchg %s 2>&1")
                :format(env or "", helpers.lua, helpers.shell_quote(helpers.preload_core), args)))
            local out = p:read("*a")
            local _, _, code = helpers.pclose(p)
            return out, code
        end

        local function at(url, args) return run("--url " .. q(url) .. " " .. args) end

        --- The output line that starts with `key`.
        local function line_of(out, key)
            for line in out:gmatch("[^\n]+") do
                if line:sub(1, #key + 1) == key .. " " then return line end
            end
            error("no line for " .. key .. " in:\n" .. out, 2)
        end

        it("list prints key, owner, host, pid, token and the lease left", function()
            local l = assert(st:lock("locks/live", { ttl = 60, owner = "alice" }))
            local stale = abandoned(st, "locks/stale", "ReservedUntil", 5)
            assert.is_true((st:put("locks/plain", "not a lock", 0)))
            local out, code = at(path, "list")
            assert.equal(0, code, out)
            assert.matches("^KEY%s+OWNER%s+HOST%s+PID%s+TOKEN%s+LEASE\n", out)
            local live = line_of(out, "locks/live")
            assert.matches(("^locks/live%%s+alice%%s+%s%%s+%d%%s+%d%%s+%%d+%%.%%ds$")
                :format(runtime.hostname:gsub("%p", "%%%0"), runtime.pid(), l:token()), live)
            assert.matches(("^locks/stale%%s+ghost%%s+gone%%-host%%s+99%%s+%d%%s+expired %%d+%%.%%ds ago$")
                :format(stale), line_of(out, "locks/stale"))
            assert.is_nil(out:find("locks/plain", 1, true), out)
        end)

        it("list with a prefix shows only those, and says when there are none", function()
            assert(st:lock("a/one", { ttl = 60 }))
            assert(st:lock("b/two", { ttl = 60 }))
            local out, code = at(path, "list b/")
            assert.equal(0, code, out)
            assert.truthy(out:find("b/two", 1, true), out)
            assert.is_nil(out:find("a/one", 1, true), out)
            out, code = at(path, "list c/")
            assert.equal(0, code, out)
            assert.equal("no locks under 'c/'\n", out)
        end)

        it("show prints one lock in detail with its raw value as JSON", function()
            local l = assert(st:lock("locks/live", { ttl = 60, owner = "alice" }))
            local out, code = at(path, "show LOCKS/LIVE")
            assert.equal(0, code, out)
            assert.matches("\ntoken:%s+" .. l:token() .. "\n", out)
            assert.matches("\nowner:%s+alice\n", out)
            assert.matches("\npid:%s+" .. runtime.pid() .. "\n", out)
            assert.matches("\nlease:%s+%d+%.%ds left\n", out)
            local raw = assert(out:match("\nvalue:%s+([^\n]+)"), out)
            assert.same(st:get("locks/live"), json.decode(raw))
        end)

        it("show exits 1 for an absent key and 4 for a value that is not a lock", function()
            assert.is_true((st:put("plain", { Name = "Ada" }, 0)))
            local out, code = at(path, "show absent")
            assert.equal(1, code, out)
            assert.matches("no lock 'absent'", out)
            out, code = at(path, "show plain")
            assert.equal(4, code, out)
            assert.matches("'plain' is not a lock", out)
        end)

        it("break removes a stale lock by the index it showed (exit 0)", function()
            local index = abandoned(st, "locks/stale", "ExpiresAt", 5)
            local out, code = at(path, "break locks/stale")
            assert.equal(0, code, out)
            assert.matches("\ntoken:%s+" .. index .. "\n", out)
            assert.matches("broke lock 'locks/stale' %(token " .. index .. "%)", out)
            assert.same({ nil, 0 }, { st:get("locks/stale") })
            out, code = at(path, "break locks/stale")
            assert.equal(1, code, out)
            assert.matches("no lock 'locks/stale'", out)
        end)

        it("break refuses a live lock (exit 5) unless --force", function()
            local l = assert(st:lock("locks/live", { ttl = 60 }))
            local out, code = at(path, "break locks/live")
            assert.equal(5, code, out)
            assert.matches("refused: lock 'locks/live' is still valid", out)
            assert.equal(l:token(), select(2, st:get("locks/live")))
            out, code = at(path, "break locks/live --force")
            assert.equal(0, code, out)
            assert.same({ nil, 0 }, { st:get("locks/live") })
            assert.same({ false, "lost" }, { l:release() })
        end)

        it("break --index exits 6 and leaves the lock when its index changed", function()
            local old = abandoned(st, "locks/stale", "ExpiresAt", 5)
            local l = assert(st:lock("locks/stale", { timeout = 0, owner = "bob" }))
            local out, code = at(path, "break locks/stale --force --index " .. old)
            assert.equal(6, code, out)
            assert.matches(("changed: lock 'locks/stale' is now at index %d, not %d")
                :format(l:token(), old), out)
            assert.equal(l:token(), select(2, st:get("locks/stale")))
            assert.is_true((l:release()))
        end)

        it("exits 2 with a message on a usage error", function()
            local cases = {
                { "", "a command is needed" },
                { "frob", "unknown command 'frob'" },
                { "show", "show needs a KEY" },
                { "show a b", "unexpected argument 'b'" },
                { "break k --index 1.5", "--index must be a positive integer" },
                { "list --force", "--index and --force go with break only" },
                { "list --verbose", "unknown option '--verbose'" },
                { "list --user u", "--user and --password go together" },
                { "show ' '", "bad key ' ': key must not be empty or blank" },
            }
            for _, case in ipairs(cases) do
                local out, code = at(path, case[1])
                assert.equal(2, code, case[1] .. ": " .. out)
                assert.truthy(out:find(case[2], 1, true), case[1] .. ": " .. out)
            end
            local out, code = run("--help")
            assert.equal(0, code, out)
            assert.matches("^usage: cmpxchg", out)
        end)

        --- stdout alone, and the exit code
        local function stdout_of(args)
            local p = assert(helpers.popen(("env -u CMPXCHG_URL -u CMPXCHG_DATABASE %s -e %s "
                .. "bin/cmpxchg %s 2>/dev/null"):format(helpers.lua, q(helpers.preload_core), args)))
            local out = p:read("*a")
            local _, _, code = helpers.pclose(p)
            return out, code
        end

        it("list --json prints one JSON document: every lock, null for what it lacks", function()
            local l = assert(st:lock("locks/live", { ttl = 60, owner = "alice" }))
            local stale = abandoned(st, "locks/stale", "ReservedUntil", 5)
            assert.is_true((st:put("locks/plain", "not a lock", 0)))
            assert.is_true((st:put("locks/bare", { ExpiresAt = core.format_time(core.time() + 60) }, 0)))
            local out, code = stdout_of("--url " .. q(path) .. " list --json locks/")
            assert.equal(0, code, out)
            local doc = assert(json.decode(out), out)
            assert.equal(3, #doc.locks, out)
            local bare, live, gone = doc.locks[1], doc.locks[2], doc.locks[3]
            assert.same({ "locks/bare", json.null, json.null, json.null, "ExpiresAt", false },
                { bare.key, bare.owner, bare.host, bare.pid, bare.field, bare.expired })
            assert.same({ "locks/live", l:token(), "alice", runtime.hostname, runtime.pid() },
                { live.key, live.token, live.owner, live.host, live.pid })
            assert.near(l:valid_until(), live.expires_at, 0.001)
            assert.is_true(live.remaining > 50 and live.remaining <= 60)
            assert.equal(live.value.ExpiresAt, live.expires)
            assert.same({ "locks/stale", stale, "ReservedUntil", true, "ghost" },
                { gone.key, gone.token, gone.field, gone.expired, gone.value.Owner })
            assert.equal(1, select(2, out:gsub("\n", "")))        -- one document, one line
            out, code = stdout_of("--url " .. q(path) .. " --json list nothing/")
            assert.equal(0, code, out)
            assert.equal('{"locks":[]}\n', out)
        end)

        it("show --json prints the lock as one JSON document; failures print nothing", function()
            local l = assert(st:lock("locks/live", { ttl = 60, owner = "alice" }))
            local out, code = stdout_of("--url " .. q(path) .. " show --json locks/live")
            assert.equal(0, code, out)
            local doc = assert(json.decode(out), out)
            assert.same({ "locks/live", l:token(), "alice", false },
                { doc.key, doc.token, doc.owner, doc.expired })
            assert.same(st:get("locks/live"), doc.value)
            assert.is_true((st:put("plain", 1, 0)))
            for args, want in pairs({ ["show --json absent"] = 1, ["show --json plain"] = 4 }) do
                out, code = stdout_of("--url " .. q(path) .. " " .. args)
                assert.equal(want, code, args)
                assert.equal("", out, args)
            end
            out, code = at(path, "break locks/live --json")
            assert.equal(2, code, out)
            assert.matches("--json goes with list and show", out, 1, true)
        end)

        it("--version prints the library's version and the Lua it runs on", function()
            local out, code = run("--version")
            assert.equal(0, code, out)
            local interpreter = helpers.sh(helpers.lua
                .. [[ -e 'io.write(jit and jit.version or _VERSION)']])
            assert.equal(("%s (%s)\n"):format(cmpxchg._VERSION, interpreter), out)
        end)

        it("documents one exit status per outcome in --help", function()
            local out = run("--help")
            for status, outcome in pairs({ [0] = "done", "absent", "usage error", "store error",
                                           "not a lock", "refused", "changed" }) do
                assert.matches("\n  " .. status .. "  " .. outcome, out)
            end
        end)

        it("keeps a key with spaces in one column, and nothing stored reaches the terminal raw",
            function()
            local nasty = "x\27[31mred\27]0;title\7\194\155[2J\226\128\174\255\ty"
            assert.is_true((st:put("locks/my key", { ExpiresAt = core.format_time(core.time() + 60),
                Owner = "Mallory " .. nasty, Host = nasty, Pid = 1 }, 0)))
            assert(st:lock("locks/plain", { ttl = 60, owner = "alice" }))
            local function clean(out)
                assert.is_nil(out:find("[%c\127]", 1) and out:gsub("\n", ""):find("[%c\127]"), out)
                assert.is_nil(out:find("\194[\128-\159]"), out)
                assert.is_nil(out:find("\226\128\174", 1, true), out)
                assert.is_nil(out:find("\255", 1, true), out)
            end
            local out, code = at(path, "list locks/")
            assert.equal(0, code, out)
            clean(out)
            local escaped = [["x\x1B[31mred\x1B]0;title\x07\u{9B}[2J\u{202E}\xFF\ty"]]
            local row = line_of(out, [["locks/my key"]])
            local cells = {}
            for cell in (row .. "  "):gmatch("(.-)  +") do cells[#cells + 1] = cell end
            assert.same({ [["locks/my key"]], [["Mallory ]] .. escaped:sub(2), escaped, "1" },
                { cells[1], cells[2], cells[3], cells[4] })
            -- the columns line up: every row's TOKEN starts where the header's does
            local header = out:match("^[^\n]+")
            assert.equal(header:find("TOKEN", 1, true), row:find("%d+  +[%d.]+s$"))
            out, code = at(path, "show " .. q("locks/my key"))
            assert.equal(0, code, out)
            clean(out)
            assert.matches("\nhost:%s+" .. escaped:gsub("%p", "%%%0") .. "\n", out)
            local raw = assert(out:match("\nvalue:%s+([^\n]+)"), out)
            local value = json.decode(raw)
            assert.equal("Mallory " .. nasty:gsub("\255", "\239\191\189"), value.Owner)
            -- error messages too: the stored value of a key that is not a lock
            assert.is_true((st:put("plain", nasty, 0)))
            out, code = at(path, "show plain")
            assert.equal(4, code, out)
            clean(out)
        end)

        it("masks the password of a user:password@ URL in what it prints", function()
            local out, code = run("--url http://admin:s3cret@127.0.0.1:1 --database db list")
            assert.equal(3, code, out)
            assert.is_nil(out:find("s3cret", 1, true), out)
            assert.truthy(out:find("http://admin:***@127.0.0.1:1", 1, true), out)
            out, code = run("--url ftp://admin:s3cret@127.0.0.1:1 list")
            assert.equal(2, code, out)
            assert.is_nil(out:find("s3cret", 1, true), out)
            assert.truthy(out:find("ftp://admin:***@127.0.0.1:1", 1, true), out)
        end)

        it("refuses a server address without its scheme (exit 2), creating nothing", function()
            local out, code = run("--url localhost:8080 list")
            assert.equal(2, code, out)
            assert.truthy(out:find("'localhost:8080' looks like a server address without a "
                .. "scheme: write http://localhost:8080", 1, true), out)
            assert.is_false(helpers.file_exists("localhost:8080"))
        end)

        it("exits 3 when the store cannot be opened, creating nothing", function()
            local missing = helpers.tmpdb()
            local out, code = at(missing, "list")
            assert.equal(3, code, out)
            assert.matches("connect: no store file", out)
            assert.is_false(helpers.file_exists(missing))
        end)

        it("takes the store from $CMPXCHG_URL, and --url over it", function()
            assert(st:lock("locks/env", { ttl = 60, owner = "from-env" }))
            local out, code = run("list", "CMPXCHG_URL=" .. q(path))
            assert.equal(0, code, out)
            assert.truthy(line_of(out, "locks/env"):find("from-env", 1, true), out)
            out, code = run("--url " .. q(path) .. " list", "CMPXCHG_URL=/nonexistent/x.db")
            assert.equal(0, code, out)
            assert.truthy(out:find("from-env", 1, true), out)
        end)
    end)
end)
