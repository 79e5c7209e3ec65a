-- The demo behind `make demo`: several OS processes contend for one lock on
-- the default store (the embedded file, or $CMPXCHG_URL), each critical
-- section proving it is alone, then a holder is killed with SIGKILL and its
-- lease is taken over. Prints a summary; exits non-zero if anything overlapped.
--   lua5.4 examples/demo.lua [--procs 4] [--rounds 50] [--store TARGET]

-- run from the checkout without installing: prefer the in-tree build
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"

local LOCK_KEY = "demo/printer"
local LEDGER_KEY = "demo/ledger"

local function options(argv)
    local o = { procs = 4, rounds = 50 }
    local i = 1
    while argv[i] do
        local flag, value = argv[i], argv[i + 1]
        if flag == "--procs" or flag == "--rounds" or flag == "--worker" then
            o[flag:sub(3)] = assert(tonumber(value), flag .. " needs a number")
        elseif flag == "--store" then
            o.store = value
        elseif flag == "--holder" then
            o.holder, i = true, i - 1
        else
            error("unknown flag " .. flag)
        end
        i = i + 2
    end
    return o
end

local opts = options(arg)

--[[ Worker: ROUNDS acquisitions. Inside the section the shared ledger is
advanced by compare-exchange on the index read at entry, carrying the lock's
token: a write that lands in between (an overlap) makes that put fail, and a
token lower than the ledger's last one (a stale holder) is refused. Each
section is reported as "section TOKEN T_REQUEST T_ACQUIRED T_RELEASED OK". ]]
local function worker()
    local store = assert(cmpxchg.open(opts.store))
    for _ = 1, opts.rounds do
        local requested = core.monotime()
        local lock = assert(store:lock(LOCK_KEY, { ttl = 10, timeout = 60 }))
        local acquired = core.monotime()
        local ledger, index = store:get(LEDGER_KEY)
        assert(index, ledger)
        local alone = lock:token() > ledger.token
        core.sleep(0.001)                           -- the work, widening any overlap
        local ok = store:put(LEDGER_KEY, { count = ledger.count + 1, token = lock:token() },
            index)
        alone = alone and ok == true
        local released = core.monotime()
        assert(lock:release())
        io.stdout:write(("section %d %.6f %.6f %.6f %s\n"):format(lock:token(), requested,
            acquired, released, alone and "ok" or "OVERLAP"))
        core.sleep(0.001 + math.random() * 0.004)   -- work outside the lock
    end
    store:close()
end

-- Holder: takes the lock with a short lease, says so, and waits to be killed.
local function holder()
    local store = assert(cmpxchg.open(opts.store))
    local lock = assert(store:lock(LOCK_KEY, { ttl = 2, timeout = 30 }))
    io.stdout:write(("held %d %d\n"):format(lock:token(), core.pid()))
    io.stdout:flush()
    core.sleep(60)
end

local function percentile(sorted, p)
    if #sorted == 0 then return 0 end
    return sorted[math.max(1, math.ceil(#sorted * p))]
end

local function spawn(flags)
    local lua = arg[-1] or "lua5.4"
    -- exec: the popen shell becomes the worker, so a SIGKILL is not reported
    local cmd = ("exec %s examples/demo.lua --store '%s' %s"):format(lua,
        opts.store:gsub("'", "'\\''"), flags)
    return assert(io.popen(cmd, "r"))
end

local function ms(seconds) return seconds * 1000 end

local function contention(store)
    assert(store:put(LEDGER_KEY, { count = 0, token = 0 }, 0))
    local started = core.monotime()
    local procs = {}
    for i = 1, opts.procs do
        procs[i] = spawn(("--worker %d --rounds %d"):format(i, opts.rounds))
    end
    local sections, per_proc, overlaps = {}, {}, 0
    for i, p in ipairs(procs) do
        per_proc[i] = 0
        for line in p:lines() do
            local token, req, acq, rel, verdict =
                line:match("^section (%d+) (%S+) (%S+) (%S+) (%S+)$")
            if token then
                per_proc[i] = per_proc[i] + 1
                if verdict ~= "ok" then overlaps = overlaps + 1 end
                sections[#sections + 1] = { token = tonumber(token), req = tonumber(req),
                    acq = tonumber(acq), rel = tonumber(rel) }
            end
        end
        assert(p:close(), "worker " .. i .. " failed")
    end
    local elapsed = core.monotime() - started
    -- overlaps on the shared monotonic clock, independently of the ledger
    table.sort(sections, function(a, b) return a.acq < b.acq end)
    local waits, handoffs = {}, {}
    for i, s in ipairs(sections) do
        waits[#waits + 1] = s.acq - s.req
        local prev = sections[i - 1]
        if prev then
            if s.acq < prev.rel or s.token <= prev.token then overlaps = overlaps + 1 end
            -- a hand-off: this process was already waiting when the lock was freed
            if s.req < prev.rel then handoffs[#handoffs + 1] = s.acq - prev.rel end
        end
    end
    table.sort(waits)
    table.sort(handoffs)
    local ledger = store:get(LEDGER_KEY)
    local ledger_index = select(2, store:get(LEDGER_KEY))
    assert(store:delete(LEDGER_KEY, ledger_index))

    print(("Contention: %d processes x %d rounds on lock '%s' (%s)"):format(opts.procs,
        opts.rounds, LOCK_KEY, tostring(store)))
    for i, n in ipairs(per_proc) do
        print(("  process %d: %d acquisitions"):format(i, n))
    end
    print(("  total %d acquisitions in %.2f s (%.0f per second)"):format(#sections, elapsed,
        #sections / elapsed))
    print(("  fenced ledger count: %d (expected %d)"):format(ledger.count, #sections))
    print(("  overlaps found: %d"):format(overlaps))
    print(("  wait for the lock (ms):  p50 %.2f  p90 %.2f  p99 %.2f  max %.2f"):format(
        ms(percentile(waits, 0.5)), ms(percentile(waits, 0.9)), ms(percentile(waits, 0.99)),
        ms(waits[#waits] or 0)))
    print(("  hand-off latency (ms):   p50 %.2f  p90 %.2f  p99 %.2f  max %.2f  (%d hand-offs)")
        :format(ms(percentile(handoffs, 0.5)), ms(percentile(handoffs, 0.9)),
        ms(percentile(handoffs, 0.99)), ms(handoffs[#handoffs] or 0), #handoffs))
    return overlaps == 0 and ledger.count == #sections
end

local function takeover(store)
    local p = spawn("--holder")
    local token, pid = assert(p:read("*l")):match("^held (%d+) (%d+)$")
    assert(token, "the holder did not take the lock")
    os.execute("kill -KILL " .. pid)
    p:close()
    local killed = core.monotime()
    local lock = assert(store:lock(LOCK_KEY, { ttl = 10, timeout = 10 }))
    local after = core.monotime() - killed
    print(("Takeover: holder pid %s killed with SIGKILL holding token %s (2 s lease);")
        :format(pid, token))
    print(("  lease taken over %.2f s later by token %d (takeovers %d, attempts %d)")
        :format(after, lock:token(), lock.takeovers, lock.attempts))
    local ok = lock.takeovers == 1 and lock:token() > tonumber(token)
    assert(lock:release())
    return ok
end

if opts.worker then
    worker()
elseif opts.holder then
    holder()
else
    if opts.store == nil then
        opts.store = os.getenv("CMPXCHG_URL")
        if opts.store == nil or opts.store == "" then opts.store = cmpxchg.default_path() end
    end
    local store = assert(cmpxchg.open(opts.store))
    -- a demo killed half-way may have left its keys: start clean
    for _, item in ipairs(assert(store:list("demo/"))) do store:delete(item.key, item.index) end
    local fine = contention(store)
    fine = takeover(store) and fine
    store:close()
    print(fine and "Result: OK, zero overlaps" or "Result: FAILED")
    os.exit(fine and 0 or 1)
end
