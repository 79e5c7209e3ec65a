--- A linearizability checker for histories of store operations: does some
-- order of the operations, each placed between its invocation and its
-- completion, follow the versioned compare-and-set register of model.lua?
--
-- The search is Wing & Gong's, with Lowe's just-in-time linearization and
-- the memoization of (linearized set, state) that Knossos and Porcupine use:
-- walk the events in time order; at a call, try to linearize that operation
-- now (a step of the model); at the completion of an operation that is not
-- linearized yet, backtrack to the latest choice. A configuration already
-- explored is not explored again. Linearizability is local (Herlihy & Wing),
-- so each key is checked on its own (P-compositionality).
--
-- An operation whose outcome is unknown (timeout, dropped connection, a
-- client killed mid-call) has no completion: it may take effect at any point
-- after its invocation, or never. Its new index, when it took effect, is not
-- known: the model keeps it as "some index above the previous one" until an
-- observation pins it. A read whose outcome is unknown has no effect and is
-- left out. An operation that failed with an error whose outcome the README
-- calls definite (anything but timeout and connect) did not take effect: it
-- is left out too, so a later read of its value is a violation.
--
-- The search is bounded (opts.max_steps): past it the key is "undecided",
-- which callers report as a failure with the reason, never a hang.
--
-- Multi-key operations (transactions, snapshot reads: multi.lua) join the keys
-- they touch into one object: each group of keys that such operations join is
-- checked as one composite register (multi.lua's model), every other key on its
-- own as before.
local model = require "spec.support.history.model"
local multi = require "spec.support.history.multi"

local checker = {}

local DEFAULT_MAX_STEPS = 3000000

--[[ The search ]]

local function by_time(a, b)
    if a.t ~= b.t then return a.t < b.t end
    if a.is_call ~= b.is_call then return a.is_call end   -- touching intervals overlap
    return a.op.id < b.op.id
end

--- `ops` without the writes of unknown outcome that no linearization needs:
-- a write (put) whose value no operation ever reports. Taking effect would
-- only put a state that nothing observes in the way of the others: every
-- operation that meets a present state reports its value, except a
-- successful compare-and-set on its index. So this holds unless some
-- successful compare-and-set is on an index that no operation reports (an
-- "orphan" index, which only an unseen write could have made): then nothing
-- is left out. Without this, every create of unknown outcome would be tried
-- at every later point where the key is absent.
local function prune(ops)
    local seen_values, seen_indexes = {}, {}
    local function saw(value, index)
        if value then seen_values[value] = true end
        if index then seen_indexes[index] = true end
    end
    for _, op in ipairs(ops) do
        if op.kind == "txn" then
            if op.outcome == "ok" then saw(nil, op.r_index) end
            for _, e in pairs(op.r_conflicts or {}) do saw(e.value, e.index) end
        elseif op.kind == "read" then
            for _, e in pairs(op.r_values or {}) do saw(e.value, e.index) end
        else
            if op.r_value then seen_values[op.r_value] = true end
            if op.outcome == "ok" or op.outcome == "fail" then
                if op.kind == "delete" and op.outcome == "ok" then
                    seen_indexes[op.index] = true       -- the deleted value's index
                elseif op.r_index then
                    seen_indexes[op.r_index] = true
                end
            end
        end
    end
    for _, op in ipairs(ops) do
        if op.outcome == "ok" then
            if op.kind == "put" and op.index > 0 and not seen_indexes[op.index] then
                return ops                          -- an orphan index
            end
            for _, sub in ipairs(op.kind == "txn" and op.ops or {}) do
                if sub.index > 0 and not seen_indexes[sub.index] then return ops end
            end
        end
    end
    local function unneeded(op)
        if op.outcome ~= "unknown" then return false end
        if op.kind == "put" then return not seen_values[op.value] end
        if op.kind ~= "txn" then return false end
        for _, sub in ipairs(op.ops) do
            if (sub.kind == "delete" and sub.index > 0) or
                    (sub.kind == "put" and seen_values[sub.value]) then
                return false
            end
        end
        return true
    end
    local out = {}
    for _, op in ipairs(ops) do
        if not unneeded(op) then out[#out + 1] = op end
    end
    return out
end

--- Decides one key's operations (each with call, ret (nil: unknown), and
-- the fields of model.step) from state `initial`. Returns
--   true, steps | false, steps, culprit (the operation whose completion the
--   search got stuck at with the most operations placed) | nil, steps,
--   reason (undecided).
local function search(ops, initial, max_steps, spec)
    spec = spec or model
    ops = prune(ops)
    table.sort(ops, function(a, b)
        if a.call ~= b.call then return a.call < b.call end
        return (a.seq or 0) < (b.seq or 0)
    end)
    local entries, remaining = {}, 0
    for id, op in ipairs(ops) do
        op.id = id
        local c = { op = op, t = op.call, is_call = true }
        entries[#entries + 1] = c
        if op.ret then
            local r = { op = op, t = op.ret, is_call = false }
            c.match = r
            entries[#entries + 1] = r
            remaining = remaining + 1
        end
    end
    table.sort(entries, by_time)
    local head = {}
    local prev = head
    for _, e in ipairs(entries) do
        prev.next, e.prev = e, prev
        prev = e
    end

    local function lift(e)
        e.prev.next = e.next
        if e.next then e.next.prev = e.prev end
        local m = e.match
        if m then
            m.prev.next = m.next
            if m.next then m.next.prev = m.prev end
        end
    end
    local function unlift(e)
        local m = e.match
        if m then
            m.prev.next = m
            if m.next then m.next.prev = m end
        end
        e.prev.next = e
        if e.next then e.next.prev = e end
    end

    -- the linearized set, exactly: the highest linearized id M and the ids
    -- below M still in the list (every id above M is not linearized)
    local linearized, top = {}, 0
    local function memo_key(state)
        local parts, n = { spec.key(state), top }, 2
        local e = head.next
        while e do
            if e.is_call then
                local id = e.op.id
                if id > top then break end
                if not linearized[id] then
                    n = n + 1
                    parts[n] = id
                end
            end
            e = e.next
        end
        return table.concat(parts, ",")
    end

    local memo, stack, depth = {}, {}, 0
    -- the completion the search got stuck at with the most placed: the
    -- operation shown as the one that cannot be placed
    local stuck, stuck_depth = nil, -1
    local state, steps = initial, 0
    local entry = head.next
    while remaining > 0 do
        steps = steps + 1
        if steps > max_steps then
            return nil, steps, ("search limit reached: %d steps"):format(max_steps)
        end
        if entry.is_call then
            local op = entry.op
            local new
            if op.ret == nil and spec.spent(state, op) then
                new = state                 -- can never take effect from here: drop it
            else
                new = spec.step(state, op)
            end
            local placed = false
            if new then
                local old_top = top
                linearized[op.id] = true
                if op.id > top then top = op.id end
                local key = memo_key(new)
                if memo[key] then
                    linearized[op.id] = nil
                    top = old_top
                else
                    memo[key] = true
                    depth = depth + 1
                    stack[depth] = { entry, state, old_top }
                    state = new
                    lift(entry)
                    if op.ret then remaining = remaining - 1 end
                    entry = head.next
                    placed = true
                end
            end
            if not placed then entry = entry.next end
        else
            -- an operation completed before anything could place it: backtrack
            if depth >= stuck_depth then stuck, stuck_depth = entry.op, depth end
            if depth == 0 then return false, steps, stuck end
            local frame = stack[depth]
            stack[depth] = nil
            depth = depth - 1
            local e = frame[1]
            linearized[e.op.id] = nil
            state, top = frame[2], frame[3]
            unlift(e)
            if e.op.ret then remaining = remaining + 1 end
            entry = e.next
        end
    end
    return true, steps
end

--[[ Histories ]]

--- The operations of `ops` as they stood at time `t`: those invoked by
-- then, an operation still running counted as of unknown outcome (a read
-- then has no effect and is left out).
local function prefix(ops, t)
    local out = {}
    for _, op in ipairs(ops) do
        if op.call <= t then
            if op.ret and op.ret > t then
                if op.kind ~= "get" and op.kind ~= "read" then
                    local copy = {}
                    for k, v in pairs(op) do copy[k] = v end
                    copy.ret, copy.outcome = nil, "unknown"
                    copy.code = "running at the cut"
                    out[#out + 1] = copy
                end
            else
                out[#out + 1] = op
            end
        end
    end
    return out
end

local function copy_ops(ops)
    local out = {}
    for i, op in ipairs(ops) do out[i] = op end
    return out
end

--- Finds the smallest failing window of a key's failing history and
-- describes it in words. `t0`: the time shown as 0.
local function explain(ops, max_steps, t0, m)
    m = m or model
    -- 1. the shortest failing prefix: at the completion of which operation
    -- the history stops being linearizable (prefixes of a linearizable
    -- history are linearizable, so a binary search finds it)
    local rets = {}
    for _, op in ipairs(ops) do
        if op.ret then rets[#rets + 1] = op.ret end
    end
    table.sort(rets)
    local lo, hi = 1, #rets            -- prefix at rets[hi] fails
    while lo < hi do
        local mid = math.floor((lo + hi) / 2)
        if search(prefix(ops, rets[mid]), m.initial, max_steps, m) == false then
            hi = mid
        else
            lo = mid + 1
        end
    end
    local cut = rets[hi]
    local base = prefix(ops, cut)
    local _, _, culprit = search(copy_ops(base), m.initial, max_steps, m)

    -- 2. the latest start from which the operations still running or begun
    -- by then fail on their own, whatever the key's state was at that start
    local starts = {}
    for _, op in ipairs(base) do starts[#starts + 1] = op.call end
    table.sort(starts)
    local function window(s)
        local w = {}
        for _, op in ipairs(base) do
            if op.ret == nil or op.ret >= s then w[#w + 1] = op end
        end
        return w
    end
    local from, ops_in = nil, base
    lo, hi = 1, #starts
    local found
    while lo <= hi do
        local mid = math.floor((lo + hi) / 2)
        local w = window(starts[mid])
        if search(copy_ops(w), m.unknown, max_steps, m) == false then
            found, lo = mid, mid + 1
        else
            hi = mid - 1
        end
    end
    if found then
        from = starts[found]
        ops_in = window(from)
        local ok, _, c = search(copy_ops(ops_in), m.unknown, max_steps, m)
        if ok == false then culprit = c else from, ops_in = nil, base end
    end

    -- unknown writes begun before the window: shown only when the window
    -- observes their value
    local seen = {}
    for _, op in ipairs(ops_in) do
        if op.r_value then seen[op.r_value] = true end
        for _, e in pairs(op.r_values or op.r_conflicts or {}) do
            if e.value then seen[e.value] = true end
        end
    end
    local shown, hidden = {}, 0
    for _, op in ipairs(ops_in) do
        local observed = op.value and seen[op.value]
        for _, sub in ipairs(op.ops or {}) do
            observed = observed or (sub.value and seen[sub.value])
        end
        if from and op.ret == nil and op.call < from and not observed then
            hidden = hidden + 1
        else
            shown[#shown + 1] = op
        end
    end
    table.sort(shown, function(a, b) return a.call < b.call end)
    local origin = from or (shown[1] and shown[1].call) or t0
    local lines = {}
    if from then
        lines[1] = ("the smallest failing window: %d operations from %.3f s, no order of which "
            .. "explains their results, whatever the key's state was at that time:")
            :format(#ops_in, from - t0)
    else
        lines[1] = ("the smallest failing window: the first %d operations, from the key's "
            .. "start (absent):"):format(#ops_in)
    end
    lines[#lines + 1] = "  call(ms)  done(ms)  process#op  operation -> result"
    for _, op in ipairs(shown) do
        lines[#lines + 1] = ("  %8.3f  %8s  %-10s  %s%s"):format((op.call - origin) * 1000,
            op.ret and ("%8.3f"):format((op.ret - origin) * 1000) or "never",
            ("%s#%s"):format(op.proc or "?", op.n or "?"), m.describe(op),
            op == culprit and "   <- cannot be placed" or "")
    end
    if hidden > 0 then
        lines[#lines + 1] = ("  (and %d writes of unknown outcome begun earlier, whose values "
            .. "the window does not show)"):format(hidden)
    end
    if culprit then
        lines[#lines + 1] = ("the operation that cannot be placed: %s#%s %s"):format(
            culprit.proc or "?", culprit.n or "?", m.describe(culprit))
    end
    return table.concat(lines, "\n"), #ops_in
end

--- Checks `ops` (operations of any keys, see model.lua for their fields,
-- plus key, call, ret, proc, n). opts: max_steps per key, explain (default
-- true), t0 (the time shown as 0 in explanations). Returns a result:
--   {ok = bool, keys = {[key] = {ok =, undecided =, reason =, steps =,
--    ops =, unknown =, explanation =}}, ops =, unknown =, failed = {keys},
--    undecided = {keys}}
-- ok is true only when every key is linearizable; an undecided key is a
-- failure with its reason.
function checker.check(ops, opts)
    opts = opts or {}
    local max_steps = opts.max_steps or DEFAULT_MAX_STEPS
    local t0 = opts.t0
    -- the groups of keys that multi-key operations join (union-find)
    local parent = {}
    local function find(k)
        while parent[k] ~= k do
            parent[k] = parent[parent[k]]
            k = parent[k]
        end
        return k
    end
    local function keys_of(op) return op.keys or { op.key } end
    for _, op in ipairs(ops) do
        local ks = keys_of(op)
        for _, k in ipairs(ks) do parent[k] = parent[k] or k end
        for i = 2, #ks do
            local a, b = find(ks[1]), find(ks[i])
            if a ~= b then parent[b] = a end
        end
        if not t0 or op.call < t0 then t0 = op.call end
    end
    local groups, members, joined = {}, {}, {}
    for k in pairs(parent) do
        local root = find(k)
        members[root] = members[root] or {}
        table.insert(members[root], k)
    end
    for _, op in ipairs(ops) do
        local root = find(keys_of(op)[1])
        groups[root] = groups[root] or {}
        table.insert(groups[root], op)
        if op.keys then joined[root] = true end
    end
    local order, names = {}, {}
    for root, ks in pairs(members) do
        table.sort(ks)
        names[root] = table.concat(ks, "+")
        order[#order + 1] = root
    end
    table.sort(order, function(a, b) return names[a] < names[b] end)
    local result = { ok = true, keys = {}, ops = #ops, unknown = 0, failed = {}, undecided = {} }
    for _, root in ipairs(order) do
        local list, key = groups[root], names[root]
        local m = joined[root] and multi.new(members[root]) or model
        local unknown = 0
        for _, op in ipairs(list) do
            if op.ret == nil then unknown = unknown + 1 end
        end
        result.unknown = result.unknown + unknown
        local ok, steps, why = search(copy_ops(list), m.initial, max_steps, m)
        local r = { ok = ok == true, steps = steps, ops = #list, unknown = unknown }
        if ok == nil then
            r.undecided, r.reason = true, why
            result.undecided[#result.undecided + 1] = key
        elseif ok == false then
            r.reason = "not linearizable"
            result.failed[#result.failed + 1] = key
            if opts.explain ~= false then
                r.explanation = explain(list, max_steps, t0, m)
            end
        end
        result.ok = result.ok and r.ok
        result.keys[key] = r
    end
    return result
end

--- The result of checker.check in words.
function checker.report(result)
    local lines = {}
    for key, r in pairs(result.keys) do
        local head = ("key %s: %d operations (%d of unknown outcome), %d search steps: %s")
            :format(key, r.ops, r.unknown, r.steps, r.ok and "linearizable"
                or r.undecided and ("UNDECIDED (%s), counted as a failure"):format(r.reason)
                or "NOT LINEARIZABLE")
        lines[#lines + 1] = head
        if r.explanation then lines[#lines + 1] = r.explanation end
    end
    table.sort(lines, function(a, b) return a < b end)
    return table.concat(lines, "\n")
end

--[[ Logs of the recorder ]]

--- Operations from the recorder's log files (recorder.lua). A call with no
-- completion (its process was killed) is of unknown outcome; a partial last
-- line (killed mid-write) is ignored. Returns ops, figures {events, calls,
-- killed (calls never completed), unknown (writes of unknown outcome),
-- errors (definite failures left out), dropped_reads (reads that failed),
-- codes = {code = n}, samples = {code = the first message}}; raises on a
-- malformed log (a bug of the test). An operation of unknown outcome keeps
-- the time its client gave up on it as `ended`.
function checker.read_logs(paths)
    local json = require "cmpxchg.json"
    local ops = {}
    local fig = { events = 0, calls = 0, killed = 0, unknown = 0, errors = 0,
                  dropped_reads = 0, codes = {}, samples = {} }
    local seq = 0
    local function index_of(v) return v ~= nil and math.floor(v) or nil end
    for _, path in ipairs(paths) do
        local f = assert(io.open(path, "rb"))
        local text = f:read("*a")
        f:close()
        local open = {}
        for line in text:gmatch("([^\n]*)\n") do
            local e = json.decode(line)
            assert(type(e) == "table", ("%s: not a JSON line: %s"):format(path, line))
            fig.events = fig.events + 1
            e.n = index_of(e.n)
            local id = e.p .. "#" .. e.n
            if e.e == "call" then
                assert(not open[id], "called twice: " .. id)
                seq = seq + 1
                fig.calls = fig.calls + 1
                open[id] = { key = e.k, kind = e.f, value = model.canon(e.v),
                    index = index_of(e.i), call = e.t, proc = e.p, n = e.n, seq = seq }
                if e.f == "txn" or e.f == "read" then     -- multi-key (multi.lua)
                    local o = open[id]
                    o.key, o.value, o.keys = nil, nil, {}
                    for i, k in ipairs(e.k) do o.keys[i] = k end
                    if e.f == "txn" then
                        o.ops = {}
                        for i, sub in ipairs(e.o) do
                            o.ops[i] = { kind = sub.f, key = sub.k, index = index_of(sub.i),
                                value = sub.f == "put" and model.canon(sub.v) or nil }
                        end
                    end
                end
            else
                local op = assert(open[id], "a completion without its call: " .. id)
                open[id] = nil
                op.ret = e.t
                if e.e == "ok" or e.e == "fail" then
                    op.outcome = e.e
                    op.r_index = index_of(e.i)
                    op.r_value = e.v ~= json.null and model.canon(e.v) or nil
                    -- a transaction's conflicts, a read's values: {key, index, value}
                    local entries = e.e == "fail" and "r_conflicts" or "r_values"
                    if e.c then
                        op[entries] = {}
                        for _, c in ipairs(e.c) do
                            op[entries][c.k] = { index = index_of(c.i),
                                value = c.v ~= nil and c.v ~= json.null and model.canon(c.v) or nil }
                        end
                    end
                    ops[#ops + 1] = op
                else
                    assert(e.e == "unknown" or e.e == "error", "unknown event " .. tostring(e.e))
                    fig.codes[e.code] = (fig.codes[e.code] or 0) + 1
                    fig.samples[e.code] = fig.samples[e.code] or e.err
                    if op.kind == "get" or op.kind == "read" then
                        fig.dropped_reads = fig.dropped_reads + 1
                    elseif e.e == "error" then
                        fig.errors = fig.errors + 1         -- not applied: left out
                    else
                        op.ret, op.ended, op.outcome, op.code, op.err = nil, e.t, "unknown",
                            e.code, e.err
                        ops[#ops + 1] = op
                    end
                end
            end
        end
        for _, op in pairs(open) do       -- its process died mid-call
            fig.killed = fig.killed + 1
            if op.kind ~= "get" and op.kind ~= "read" then
                op.outcome, op.code = "unknown", "killed mid-call"
                ops[#ops + 1] = op
            end
        end
    end
    for _, op in ipairs(ops) do
        if op.outcome == "unknown" then fig.unknown = fig.unknown + 1 end
    end
    return ops, fig
end

checker.search = search

return checker
