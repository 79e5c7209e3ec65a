-- The linearizability checker over multi-key operations (multi.lua): hand-made
-- histories of transactions and snapshot reads, valid ones in several orders
-- and with transactions of unknown outcome applied or not, and each violation
-- of all-or-none a store could commit (a torn write, a torn read, a report of
-- the wrong keys, two transactions both taking the same state). Then the
-- recorder's events for them read back.
local checker = require "spec.support.history.checker"
local model = require "spec.support.history.model"
local recorder = require "spec.support.history.recorder"

local function v(s) return s ~= "nil" and model.canon(s) or nil end

--- An operation: call, ret (nil: unknown), proc and what it did.
--   txn(call, ret, {"put a x 0", "del b 5", ...}, "ok 9" | "fail a 3 y, b 0 nil" | "?")
--   read(call, ret, "a x 3, b nil 0")
--   single(call, ret, "put@a x 0 -> ok 3") as in history_checker_spec
local n = 0
local function txn(call, ret, subs, result)
    n = n + 1
    local op = { kind = "txn", ops = {}, keys = {}, call = call, ret = ret, proc = "p", n = n }
    for i, sub in ipairs(subs) do
        local kind, key, a1, a2 = sub:match("^(%a+) (%S+) (%S+) ?(%S*)$")
        if kind == "put" then
            op.ops[i] = { kind = "put", key = key, value = v(a1), index = tonumber(a2) }
        else
            op.ops[i] = { kind = "delete", key = key, index = tonumber(a1) }
        end
        op.keys[i] = key
    end
    if result == "?" then
        op.outcome = "unknown"
    elseif result:match("^ok") then
        op.outcome, op.r_index = "ok", tonumber(result:match("^ok (%d+)$"))
    else
        op.outcome, op.r_conflicts = "fail", {}
        for entry in result:sub(6):gmatch("[^,]+") do
            local key, index, value = entry:match("(%S+) (%d+) (%S+)")
            op.r_conflicts[key] = { index = tonumber(index), value = value ~= "?" and v(value) or nil }
        end
    end
    return op
end

local function read(call, ret, result)
    n = n + 1
    local op = { kind = "read", keys = {}, r_values = {}, outcome = "ok", call = call, ret = ret,
                 proc = "r", n = n }
    for entry in result:gmatch("[^,]+") do
        local key, value, index = entry:match("(%S+) (%S+) (%d+)")
        op.keys[#op.keys + 1] = key
        op.r_values[key] = { value = v(value), index = tonumber(index) }
    end
    return op
end

local function put(call, ret, key, value, index, result)
    n = n + 1
    local ok, r_index, r_value = result:match("^(%a+) (%d+) ?(%S*)$")
    return { kind = "put", key = key, value = v(value), index = index, call = call, ret = ret,
             outcome = ok, r_index = tonumber(r_index), r_value = r_value ~= "" and v(r_value) or nil,
             proc = "s", n = n }
end

local function valid(ops)
    local result = checker.check(ops)
    assert.is_true(result.ok, checker.report(result))
    return result
end

local function invalid(ops)
    local result = checker.check(ops)
    assert.is_false(result.ok, "judged linearizable")
    assert.equal(0, #result.undecided, checker.report(result))
    return result
end

describe("history checker, multi-key operations", function()
    it("checks the keys a transaction joins as one object, the others alone", function()
        local result = valid({
            txn(0, 1, { "put a x 0", "put b y 0" }, "ok 5"),
            read(2, 3, "a x 5, b y 5"),
            put(4, 5, "c", "z", 0, "ok 6"),
        })
        assert.truthy(result.keys["a+b"])
        assert.truthy(result.keys.c)
    end)

    describe("accepts", function()
        it("a transfer between two counters, read between the transactions", function()
            valid({
                txn(0, 1, { "put a 10 0", "put b 0 0" }, "ok 3"),
                read(2, 3, "a 10 3, b 0 3"),
                txn(4, 5, { "put a 7 3", "put b 3 3" }, "ok 8"),
                read(6, 7, "a 7 8, b 3 8"),
                txn(8, 9, { "put a 1 3", "put b 9 3" }, "fail a 8 7, b 8 3"),
                txn(10, 11, { "del a 8", "del b 0" }, "fail b 8 3"),
                txn(12, 13, { "del a 8", "del b 8" }, "ok 9"),
                read(14, 15, "a nil 0, b nil 0"),
            })
        end)

        it("overlapping transactions in whichever order the store took them", function()
            valid({
                txn(0, 10, { "put a x 0", "put b x 0" }, "ok 4"),
                txn(1, 9, { "put b y 0", "put c y 0" }, "fail b 4 x"),
                read(2, 8, "a x 4, b x 4, c nil 0"),
            })
            valid({
                txn(0, 10, { "put a x 0", "put b x 0" }, "fail b 2 y"),
                txn(1, 9, { "put b y 0", "put c y 0" }, "ok 2"),
                read(2, 3, "a nil 0, b y 2, c y 2"),
            })
        end)

        it("a transaction of unknown outcome, applied or not", function()
            local applied = {
                txn(0, nil, { "put a x 0", "put b x 0" }, "?"),
                read(5, 6, "a x 7, b x 7"),
            }
            valid(applied)
            valid({ txn(0, nil, { "put a x 0", "put b x 0" }, "?"), read(5, 6, "a nil 0, b nil 0") })
            -- applied after a read that did not see it
            valid({
                txn(0, nil, { "put a x 0", "put b x 0" }, "?"),
                read(1, 2, "a nil 0, b nil 0"),
                read(3, 4, "a x 7, b x 7"),
            })
        end)

        it("a refusal whose value was read after it, and one without a value", function()
            valid({
                txn(0, 1, { "put a x 0" }, "ok 3"),
                txn(2, 3, { "put a y 0", "put b y 0" }, "fail a 3 x"),
                txn(4, 5, { "put a y 0", "put b y 0" }, "fail a 3 ?"),
            })
        end)
    end)

    describe("refuses", function()
        it("a torn read: one key from before a transaction, one from after", function()
            invalid({
                txn(0, 1, { "put a 10 0", "put b 0 0" }, "ok 3"),
                txn(2, 3, { "put a 7 3", "put b 3 3" }, "ok 8"),
                read(4, 5, "a 7 8, b 0 3"),
            })
        end)

        it("a torn write: a refused transaction that left one of its writes", function()
            invalid({
                txn(0, 1, { "put a x 0" }, "ok 3"),
                txn(2, 3, { "put a y 3", "put b y 7" }, "fail b 0 nil"),
                read(4, 5, "a y 9, b nil 0"),
            })
        end)

        it("a transaction of unknown outcome seen half applied", function()
            invalid({
                txn(0, nil, { "put a x 0", "put b x 0" }, "?"),
                read(5, 6, "a x 7, b nil 0"),
            })
        end)

        it("two transactions that both took the same state", function()
            invalid({
                txn(0, 1, { "put a 10 0", "put b 0 0" }, "ok 3"),
                txn(2, 5, { "put a 7 3", "put b 3 3" }, "ok 8"),
                txn(3, 6, { "put a 5 3", "put c 5 0" }, "ok 9"),
            })
        end)

        it("a refusal that names a key whose compare held, or misses one that failed", function()
            invalid({
                txn(0, 1, { "put a x 0", "put b x 0" }, "ok 3"),
                txn(2, 3, { "put a y 3", "put b y 0" }, "fail a 3 x, b 3 x"),
            })
            invalid({
                txn(0, 1, { "put a x 0", "put b x 0" }, "ok 3"),
                txn(2, 3, { "put a y 0", "put b y 0" }, "fail a 3 x"),
            })
        end)

        it("writes of one transaction at indexes not above the keys' own", function()
            invalid({
                txn(0, 1, { "put a x 0" }, "ok 5"),
                txn(2, 3, { "put a y 5", "put b y 0" }, "ok 5"),
            })
        end)
    end)

    it("reads transactions and snapshot reads back from the recorder's logs", function()
        local path = os.tmpname()
        local rec = recorder.open(path, "c1")
        local ops = { { op = "put", key = "a", value = "c1-1", index = 0 },
                      { op = "delete", key = "b", index = 0 } }
        local t1 = rec:call_txn(ops)
        rec:done_txn(t1, true, 7)
        local t2 = rec:call_txn(ops)
        rec:done_txn(t2, false, { { key = "a", index = 7, value = "c1-1" } })
        local r1 = rec:call_read({ "a", "b" })
        rec:done_read(r1, { "a", "b" }, { a = { value = "c1-1", index = 7 } })
        local t3 = rec:call_txn(ops)
        rec:done_txn(t3, nil, "timeout: gone", "timeout")
        rec:call_txn(ops)          -- killed mid-call
        rec:close()
        local read_back, fig = checker.read_logs({ path })
        os.remove(path)
        assert.equal(1, fig.killed)
        assert.equal(5, #read_back)
        local first = read_back[1]
        assert.same({ "a", "b" }, first.keys)
        assert.same({ kind = "put", key = "a", value = "sc1-1", index = 0 }, first.ops[1])
        assert.same({ "ok", 7 }, { first.outcome, first.r_index })
        assert.same({ a = { index = 7, value = "sc1-1" } }, read_back[2].r_conflicts)
        assert.same({ a = { index = 7, value = "sc1-1" }, b = { index = 0 } }, read_back[3].r_values)
        assert.equal("unknown", read_back[4].outcome)
        assert.is_true(checker.check(read_back).ok)
    end)
end)
