-- store:update, driven through the scripted memory backend and a fake clock:
-- what it reads and writes, each lost race, each pause and the retry limit, exactly.
local cmpxchg = require "cmpxchg"
local helpers = require "spec.helpers"
local store = require "cmpxchg.store"
local Memory = require "spec.support.memory_backend"

describe("store:update (unit, fake clock)", function()
    local clock, restore, sleeps, backend, st

    before_each(function()
        clock, restore = helpers.fake_clock()
        sleeps = clock.sleeps
        backend = Memory.new()
        st = store.new(backend)
    end)

    after_each(function() restore() end)

    local function calls()
        local out = {}
        for i, c in ipairs(backend.calls) do out[i] = c.method end
        return out
    end

    --- fn for update that, on its first `n` calls, lets a rival write the key
    -- between our read and our write, then increments
    local function raced(n)
        local seen = {}
        return function(v)
            seen[#seen + 1] = v
            if #seen <= n then
                local idx = backend:get("k")
                assert(backend:put("k", tostring((tonumber(v) or 0) + 100), idx))
            end
            return (tonumber(v) or 0) + 1
        end, seen
    end

    it("creates an absent key with index 0, calling fn with nil", function()
        local got
        local value, index = st:update("k", function(v) got = { v }; return 1 end)
        assert.same({ nil }, got)
        assert.equal(1, value)
        assert.same({ "get", "put" }, calls())
        assert.equal(0, backend.calls[2][3])
        assert.same({ 1, index }, { backend:item("k") })
        assert.same({}, sleeps)
    end)

    it("writes fn(value) with the index just read and returns the new value and index", function()
        local _, i1 = st:put("k", { n = 41 }, 0)
        local value, i2 = st:update("k", function(v) return { n = v.n + 1 } end)
        assert.same({ n = 42 }, value)
        assert.is_true(i2 > i1)
        assert.equal(i1, backend.calls[#backend.calls][3])
        assert.same({ { n = 42 }, i2 }, { st:get("k") })
    end)

    it("re-reads and calls fn again after a lost race, after a jittered pause", function()
        st:put("k", 1, 0)
        local fn, seen = raced(1)
        local value, index = st:update("k", fn)
        -- the rival wrote 101 after our first read; fn then saw it
        assert.same({ 1, 101 }, seen)
        assert.equal(102, value)
        assert.same({ 102, index }, { backend:item("k") })
        assert.equal(1, #sleeps)
        assert.is_true(sleeps[1] >= 0.005 and sleeps[1] <= 0.005 + 1e-12)   -- the first step
    end)

    it("doubles the backoff step up to its cap, with full jitter in between", function()
        st:put("k", 0, 0)
        local fn = raced(8)
        assert.equal(801, (st:update("k", fn, { retries = 8 })))
        assert.equal(8, #sleeps)
        local step = 0.005
        for i, s in ipairs(sleeps) do
            assert.is_true(s >= 0.005 - 1e-12 and s <= step + 1e-12,
                ("pause %d is %.4f, outside [0.005, %.4f]"):format(i, s, step))
            step = math.min(step * 2, 0.1)
        end
    end)

    it("gives up with conflict after opts.retries lost races, leaving the rival's value", function()
        st:put("k", 0, 0)
        local fn, seen = raced(math.huge)
        local value, err, code = st:update("k", fn, { retries = 3 })
        assert.is_nil(value)
        assert.equal("conflict", code)
        assert.equal("conflict: 'k' was changed by another writer at each of 4 attempts", err)
        assert.equal(4, #seen)
        assert.equal(3, #sleeps)
        assert.equal(400, (backend:item("k")))
    end)

    it("retries 10 times by default; retries = 0 tries once", function()
        st:put("k", 0, 0)
        local fn, seen = raced(math.huge)
        assert.equal("conflict", select(3, st:update("k", fn)))
        assert.equal(11, #seen)
        fn, seen = raced(math.huge)
        for i = #sleeps, 1, -1 do sleeps[i] = nil end
        local _, err = st:update("k", fn, { retries = 0 })
        assert.matches("at each of 1 attempt$", err)
        assert.equal(1, #seen)
        assert.same({}, sleeps)
    end)

    it("sees a key deleted under it as absent again", function()
        local _, idx = st:put("k", "old", 0)
        local seen, n = {}, 0
        local value = st:update("k", function(v)
            n = n + 1
            seen[n] = v
            if n == 1 then assert(backend:delete("k", idx)) end
            return "new"
        end)
        assert.equal(2, n)
        assert.equal("old", seen[1])
        assert.is_nil(seen[2])
        assert.equal("new", value)
        assert.equal(0, backend.calls[#backend.calls][3])
    end)

    it("leaves the key alone when fn returns nil, returning the current value and index", function()
        local _, idx = st:put("k", { n = 1 }, 0)
        local puts = backend:count("put")
        assert.same({ { n = 1 }, idx }, { st:update("k", function() return nil end) })
        assert.same({ nil, 0 }, { st:update("absent", function() end) })
        assert.equal(puts, backend:count("put"))
    end)

    it("stores what fn returns: false and cmpxchg.null too", function()
        assert.is_false((st:update("f", function() return false end)))
        assert.is_false((backend:item("f")))
        assert.equal(cmpxchg.null, (st:update("n", function() return cmpxchg.null end)))
        assert.equal(cmpxchg.null, (backend:item("n")))
    end)

    it("passes expires to every write, as put does", function()
        st:put("k", 0, 0)
        local fn = raced(1)
        st:update("k", fn, { expires = 2000000000 })
        local writes = {}
        for _, c in ipairs(backend.calls) do
            if c.method == "put" and c[1] == "k" and c[4] ~= nil then writes[#writes + 1] = c[4] end
        end
        assert.same({ 2000000000, 2000000000 }, writes)
        assert.equal(2000000000, select(3, backend:item("k")))
    end)

    it("propagates an error raised by fn unchanged, writing nothing", function()
        st:put("k", 1, 0)
        local puts = backend:count("put")
        local boom = setmetatable({}, { __tostring = function() return "boom" end })
        local ok, err = pcall(st.update, st, "k", function() error(boom) end)
        assert.is_false(ok)
        assert.equal(boom, err)
        assert.has_error(function() st:update("k", function() error("plain") end) end)
        assert.equal(puts, backend:count("put"))
    end)

    it("returns store failures as nil, err, code: of the read and of the write", function()
        backend:fail_next("get", "connect: refused", "connect")
        assert.same({ nil, "connect: refused", "connect" },
            { st:update("k", function() return 1 end) })
        backend:fail_next("put", "timeout: no answer", "timeout")
        local called = 0
        assert.same({ nil, "timeout: no answer", "timeout" },
            { st:update("k", function() called = called + 1; return 1 end) })
        assert.equal(1, called)         -- not retried: the outcome is unknown
        assert.same({}, sleeps)
    end)

    it("raises on misuse at the caller's line, before any I/O", function()
        local this = debug.getinfo(1, "S").short_src
        local cases = {
            { { 42, print }, "^bad argument #1 to 'update' %(string expected, got number%)" },
            { { "", print }, "^bad argument #1 to 'update' %(key must not be empty" },
            { { "rvn-atomic/x", print }, "^bad argument #1 to 'update' %(keys starting" },
            { { "k", nil }, "^bad argument #2 to 'update' %(function expected, got nil%)" },
            { { "k", "f" }, "^bad argument #2 to 'update' %(function expected, got string%)" },
            { { "k", print, "o" }, "^bad argument #3 to 'update' %(table expected, got string%)" },
            { { "k", print, { retry = 3 } }, "^bad argument #3 to 'update' %(unknown option 'retry'%)" },
            { { "k", print, { retries = -1 } }, "^bad argument #3 to 'update' %(retries must be" },
            { { "k", print, { retries = 1.5 } }, "^bad argument #3 to 'update' %(retries must be" },
            { { "k", print, { retries = 0 / 0 } }, "^bad argument #3 to 'update' %(retries must be" },
            { { "k", print, { expires = "soon" } }, "^bad argument #3 to 'update' %(expires must be" },
        }
        for _, case in ipairs(cases) do
            local args = case[1]
            local ok, err = pcall(function() st:update(args[1], args[2], args[3]) end)
            assert.is_false(ok)
            err = err:gsub("^" .. this:gsub("%p", "%%%0") .. ":%d+: ", "", 1)
            assert.matches(case[2], err)
        end
        assert.has_error(function() st.update({}, "k", print) end,
            "bad argument #1 to 'update' (cmpxchg.Store expected, got table)")
        assert.same({}, backend.calls)
    end)

    it("names the caller's line, and raises on a value fn returned that JSON cannot encode", function()
        local line = debug.getinfo(1, "l").currentline + 1
        local ok, err = pcall(function() st:update("k", function() return print end) end)
        assert.is_false(ok)
        assert.matches(":" .. line .. ": bad argument #2 to 'update' %(fn returned a value JSON "
            .. "cannot encode: cannot encode", err)
        assert.same({ "get" }, calls())
    end)

    it("raises on a closed store, also when fn closes it", function()
        st:put("k", 1, 0)
        assert.has_error(function()
            st:update("k", function() st:close(); return 2 end)
        end, "attempt to use a closed store")
        assert.equal(1, (backend:item("k")))
        assert.has_error(function() st:update("k", print) end, "attempt to use a closed store")
    end)
end)
