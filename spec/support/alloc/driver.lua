--- The operations the allocation-failure checker (host.c) runs at every
-- failure point, and what it checks after each run. One store handle lives
-- through all the runs, so that anything a failed run leaves behind (a
-- statement stopped mid-step, an open transaction, the file's write lock)
-- shows in the checks of the next: a second handle on the same file, which
-- is never armed, reads what the file holds and writes without waiting.
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"

local path = assert(..., "usage: host driver.lua CPATH STORE-PATH")

local store = assert(cmpxchg.open(path))
local witness = assert(cmpxchg.open(path, { timeout = 0 }))

-- what the file holds between runs: key -> { value =, index = }
local BASE = {
    ["a/1"] = { n = 1 },
    ["a/2"] = "two",
    ["b/x"] = 3,
    ["taken"] = { Owner = "someone", ExpiresAt = "9999-01-01T00:00:00.0000000Z" },
    ["zzz"] = true,
    ["big"] = ("big value "):rep(200),     -- read by the protected get (csrc/embedded.c)
    ["blob"] = { as = "blob" },             -- stored as a BLOB by another writer (setup)
}
local expected = {}

local function fail(fmt, ...)
    error(fmt:format(...), 2)
end

local function same(a, b)
    if type(a) ~= "table" or type(b) ~= "table" then return a == b end
    for k, v in pairs(a) do
        if not same(v, b[k]) then return false end
    end
    for k in pairs(b) do
        if a[k] == nil then return false end
    end
    return true
end

local function show(v)
    if type(v) ~= "table" then return tostring(v) end
    local parts = {}
    for k, x in pairs(v) do parts[#parts + 1] = tostring(k) .. "=" .. show(x) end
    table.sort(parts)
    return "{" .. table.concat(parts, ", ") .. "}"
end

local function expect(got, want, what)
    if not same(got, want) then fail("%s: got %s, want %s", what, show(got), show(want)) end
end

local function sorted_keys(t)
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = k end
    table.sort(keys)
    return keys
end

--- The whole namespace as the witness reads it: key -> { value =, index = }.
local function contents()
    local items = assert(witness:list(""))
    local map = {}
    for _, item in ipairs(items) do
        map[item.key] = { value = item.value, index = item.index }
    end
    return map
end

local function setup()
    for key, value in pairs(BASE) do
        local ok, index = assert(witness:put(key, value, 0))
        expected[key] = { value = value, index = index }
        assert(ok)
    end
    -- SQLite then converts it to text when it is read, which allocates
    local sh = io.popen(("sqlite3 '%s' \"UPDATE cmpxchg_items SET value = CAST(value AS BLOB) "
        .. "WHERE k = 'blob'\" 2>&1"):format(path:gsub("'", "'\\''")))
    local out = sh:read("*a")
    assert(sh:close(), out)
end

--- Checks that `store` is fully usable and agrees with `expected`: a
-- create-only put on an existing key still fails, lists hold exactly their
-- prefix, reads see the file as it is, and both handles can write at once.
local function check_usable()
    expect(contents(), expected, "the file's contents")
    for _, key in ipairs(sorted_keys(expected)) do
        local value, index = store:get(key)
        expect({ value, index }, { expected[key].value, expected[key].index }, "get " .. key)
    end
    local t = expected.taken
    expect({ store:put("taken", "mine", 0) }, { false, t.index, t.value },
        "put('taken', v, 0) on an existing key")
    expect({ store:list("zzz/") }, { {} }, "list('zzz/')")
    local a = {}
    for _, key in ipairs({ "a/1", "a/2" }) do
        a[#a + 1] = { key = key, value = expected[key].value, index = expected[key].index }
    end
    expect({ store:list("a/") }, { a }, "list('a/')")
    expect({ store:get_many({ "b/x", "nope" }) },
        { { ["b/x"] = expected["b/x"] } }, "get_many")
    for _, h in ipairs({ witness, store }) do
        local ok, index = h:put("probe", 1, 0)
        expect(ok, true, "a write (probe) on a free key")
        expect({ h:delete("probe", index) }, { true, index + 1, 1 }, "delete probe")
    end
end

--- Puts `key` back to its BASE value (after an operation that changed it).
local function restore(key)
    local now = contents()[key]
    if same(now, expected[key]) then return end
    local ok, index
    if BASE[key] == nil then
        if now then ok = assert(witness:delete(key, now.index)) end
        expected[key] = nil
        assert(ok, "restore " .. key)
        return
    end
    ok, index = assert(witness:put(key, BASE[key], now and now.index or 0))
    assert(ok, "restore " .. key)
    expected[key] = { value = BASE[key], index = index }
end

--[[ Each operation: run() is what runs armed, and check(...) what its
normal results must be. `changed(now)` says whether the file's state after
a run that failed (a memory error raised, or SQLite's out of memory
returned as an error) is one the operation may have made: a write applied
before the error. The error tells nothing about the outcome, exactly as a
timeout does on a server. ]]

local last_index
local operations = {}
local order = {}

local function operation(name, op)
    order[#order + 1] = name
    operations[name] = op
end

operation("open", {
    run = function() return cmpxchg.open(path) end,
    check = function(s, err)
        if cmpxchg.type(s) ~= "store" then fail("open returned %s, %s", show(s), show(err)) end
        expect({ s:get("a/2") }, { "two", expected["a/2"].index }, "get through the new store")
        s:close()
    end,
})

-- the first open of a file, which makes the schema: a failed one leaves no
-- file, or one that opens (never one refused as another application's)
local fresh = path .. "-fresh.db"
local function remove_fresh()
    for _, suffix in ipairs({ "", "-wal", "-shm", "-journal" }) do os.remove(fresh .. suffix) end
end

operation("open_new", {
    run = function()
        remove_fresh()
        return cmpxchg.open(fresh)
    end,
    check = function(s, err)
        if cmpxchg.type(s) ~= "store" then fail("open returned %s, %s", show(s), show(err)) end
        expect({ s:put("k", 1, 0) }, { true, 1, 1 }, "the first put in a new file")
        s:close()
    end,
    changed = function() return true end,      -- another file
    after = function()
        local s, err = cmpxchg.open(fresh)
        if s == nil then fail("a new file a failed open left cannot be opened: %s", err) end
        s:close()
        remove_fresh()
    end,
})

-- the core's own open: a namespace given as a number is converted to a
-- string that nothing else references while the file is opened (the
-- number's digits appear in no string constant here, which would keep it)
operation("open_core", {
    run = function() return core.embedded_open(path, { namespace = 4242 }) end,
    check = function(h, err)
        if h == nil then fail("embedded_open returned nil, %s", show(err)) end
        local ok, index = h:put("in-ns", 1, 0)
        expect(ok, true, "put in namespace 4242")
        local other = assert(cmpxchg.open(path, { database = tostring(2121 * 2) }))
        expect({ other:get("in-ns") }, { 1, index }, "the key, from namespace '4242'")
        expect({ other:delete("in-ns", index) }, { true, index + 1, 1 }, "delete it")
        other:close()
        h:close()
    end,
})

operation("put_new", {
    run = function() return store:put("a/3", { v = 3 }, 0) end,
    check = function(...)
        local ok, index, value = ...
        expect({ ok, value }, { true, { v = 3 } }, "put_new")
        expect(contents()["a/3"], { value = { v = 3 }, index = index }, "a/3 after put_new")
        if index <= last_index then fail("put_new index %d is not new", index) end
    end,
    changed = function(now) return same(now["a/3"] and now["a/3"].value, { v = 3 }) end,
    restore = { "a/3" },
})

operation("put_taken", {
    run = function() return store:put("taken", "mine", 0) end,
    check = function(...)
        expect({ ... }, { false, expected.taken.index, expected.taken.value }, "put_taken")
    end,
})

operation("put_absent", {
    run = function() return store:put("nope", 1, 7) end,
    check = function(...) expect({ ... }, { false, 0 }, "put_absent") end,
})

operation("put_swap", {
    run = function() return store:put("a/1", { n = 2 }, expected["a/1"].index) end,
    check = function(ok, index, value)
        expect({ ok, value }, { true, { n = 2 } }, "put_swap")
        expect(contents()["a/1"], { value = { n = 2 }, index = index }, "a/1 after put_swap")
    end,
    changed = function(now) return same(now["a/1"].value, { n = 2 }) end,
    restore = { "a/1" },
})

operation("delete", {
    run = function() return store:delete("b/x", expected["b/x"].index) end,
    check = function(ok, index, value)
        expect({ ok, value }, { true, 3 }, "delete")
        if contents()["b/x"] ~= nil then fail("b/x still there after delete") end
        if index <= last_index then fail("delete index %d is not new", index) end
    end,
    changed = function(now) return now["b/x"] == nil end,
    restore = { "b/x" },
})

operation("delete_stale", {
    run = function() return store:delete("b/x", expected["b/x"].index + 1) end,
    check = function(...)
        expect({ ... }, { false, expected["b/x"].index, 3 }, "delete_stale")
    end,
})

operation("get", {
    run = function() return store:get("taken") end,
    check = function(...)
        expect({ ... }, { expected.taken.value, expected.taken.index }, "get")
    end,
})

operation("get_big", {
    run = function() return store:get("big") end,
    check = function(...)
        expect({ ... }, { expected.big.value, expected.big.index }, "get_big")
    end,
})

operation("get_blob", {
    run = function() return store:get("blob") end,
    check = function(...)
        expect({ ... }, { expected.blob.value, expected.blob.index }, "get_blob")
    end,
})

operation("get_many", {
    run = function() return store:get_many({ "a/1", "nope", "taken" }) end,
    check = function(...)
        expect({ ... }, { { ["a/1"] = expected["a/1"], taken = expected.taken } }, "get_many")
    end,
})

operation("list", {
    run = function() return store:list("a/") end,
    check = function(...)
        local want = {}
        for _, key in ipairs({ "a/1", "a/2" }) do
            want[#want + 1] = { key = key, value = expected[key].value,
                                index = expected[key].index }
        end
        expect({ ... }, { want }, "list")
    end,
})

operation("lock", {
    run = function() return store:lock("L", { ttl = 30, timeout = 0, owner = "checker" }) end,
    check = function(l, err)
        if cmpxchg.type(l) ~= "lock" then fail("lock returned %s, %s", show(l), show(err)) end
        local now = contents().L
        expect({ now and now.index, now and now.value.Owner }, { l:token(), "checker" },
            "the lock's key")
        expect({ l:release() }, { true }, "release")
    end,
    changed = function(now) return now.L ~= nil and now.L.value.Owner == "checker" end,
    restore = { "L" },
})

operation("lock_release", {
    run = function()
        local l, err, code = store:lock("L", { ttl = 30, timeout = 0, owner = "checker" })
        if not l then return nil, err, code end
        return l:release()
    end,
    check = function(...)
        expect({ ... }, { true }, "lock and release")
        if contents().L ~= nil then fail("L still held after its release") end
    end,
    changed = function(now) return now.L ~= nil and now.L.value.Owner == "checker" end,
    restore = { "L" },
})

operation("update", {
    run = function()
        return store:update("a/2", function(v) return v .. "!" end)
    end,
    check = function(value, index)
        expect(value, "two!", "update")
        expect(contents()["a/2"], { value = "two!", index = index }, "a/2 after update")
    end,
    changed = function(now) return now["a/2"].value == "two!" end,
    restore = { "a/2" },
})

operation("list_page", {
    run = function() return store:list("", { start = 1, page_size = 2 }) end,
    check = function(...)
        local want = {}
        for _, key in ipairs({ "a/2", "b/x" }) do
            want[#want + 1] = { key = key, value = expected[key].value,
                                index = expected[key].index }
        end
        expect({ ... }, { want }, "list_page")
    end,
})

operation("lock_held", {
    run = function() return store:lock("taken", { timeout = 0 }) end,
    check = function(l, err, code)
        expect({ l, code }, { nil, "timeout" }, "lock_held")
        if not tostring(err):find("^timeout: lock 'taken' is held by someone until 9999") then
            fail("lock_held: %s", tostring(err))
        end
    end,
})

-- a transaction (issue 18): all of its writes or none, whatever fails
operation("txn", {
    run = function()
        return store:transaction({
            { op = "put", key = "a/1", value = { n = 5 }, index = expected["a/1"].index },
            { op = "put", key = "a/3", value = { v = 3 }, index = 0 },
            { op = "delete", key = "b/x", index = expected["b/x"].index },
        })
    end,
    check = function(ok, index)
        expect(ok, true, "txn")
        local now = contents()
        expect(now["a/1"], { value = { n = 5 }, index = index }, "a/1 after txn")
        expect(now["a/3"], { value = { v = 3 }, index = index }, "a/3 after txn")
        if now["b/x"] ~= nil then fail("b/x still there after txn") end
        if index <= last_index then fail("txn index %d is not new", index) end
    end,
    -- only the whole transaction: a state with some of its writes is a torn one
    changed = function(now)
        return same(now["a/1"].value, { n = 5 }) and now["a/3"] ~= nil and
            same(now["a/3"].value, { v = 3 }) and now["b/x"] == nil
    end,
    restore = { "a/1", "a/3", "b/x" },
})

operation("txn_conflict", {
    run = function()
        return store:transaction({
            { op = "put", key = "a/2", value = "x", index = expected["a/2"].index + 1000 },
            { op = "put", key = "a/4", value = "y", index = 0 },
            { op = "put", key = "taken", value = "mine", index = 0 },
            { op = "delete", key = "zzz", index = 0 },
        })
    end,
    check = function(...)
        expect({ ... }, { false, {
            { key = "a/2", index = expected["a/2"].index, value = "two" },
            { key = "taken", index = expected.taken.index, value = expected.taken.value },
            { key = "zzz", index = expected.zzz.index, value = true } } }, "txn_conflict")
    end,
})

-- ALLOC_OPS=list,lock: only those (to look at one)
local only = os.getenv("ALLOC_OPS")
if only and only ~= "" then
    order = {}
    for name in only:gmatch("[^,]+") do
        assert(operations[name], "no operation " .. name)
        order[#order + 1] = name
    end
end

local driver = { operations = order }

--- Whether operation `name` runs in `pass`: the core's open is the same C
-- code as open, for SQLite.
function driver.wants(name, pass)
    return not (name == "open_core" and pass:find("SQLite", 1, true))
end

--- Runs operation `name` (armed by the host).
function driver.run(name)
    return operations[name].run()
end

-- what the store answers when SQLite runs out of memory
local SQLITE_FAILURE = { io = true, connect = true }

--- Checks failure point `n` of operation `name` in `pass` (host.c): `ok`
-- false means it raised (`...` is then the error), `met` that it met an
-- injected failure.
function driver.check(name, pass, n, ok, met, ...)
    local op = operations[name]
    local first, err, code = ...
    local sqlite = pass:find("SQLite", 1, true) ~= nil
    collectgarbage()            -- what a failed run left unreferenced goes now
    if not ok and (sqlite or first ~= "not enough memory") then
        fail("%s raised %s at failure point %d", name, show(first), n)
    elseif not ok and not met then
        fail("%s raised a memory error without meeting a failure", name)
    end
    local failed = not ok or (sqlite and met and first == nil and SQLITE_FAILURE[code] and
        tostring(err):find("out of memory", 1, true) ~= nil)
    if failed then
        local now = contents()
        for key, want in pairs(expected) do
            if not same(now[key], want) and not (op.changed and op.changed(now)) then
                fail("%s failed and left %s as %s", name, key, show(now[key]))
            end
        end
        for key in pairs(now) do
            if expected[key] == nil and not (op.changed and op.changed(now)) then
                fail("%s failed and left %s, which was not there", name, key)
            end
        end
    else
        op.check(...)
    end
    if op.after then op.after() end
    for _, key in ipairs(op.restore or {}) do restore(key) end
    last_index = assert(witness.backend.handle:last_index())
    check_usable()
end

function driver.finish()
    store:close()
    witness:close()
end

setup()
last_index = assert(witness.backend.handle:last_index())
check_usable()
return driver
