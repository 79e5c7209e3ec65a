-- Transactions under contention and faults, on every backend (the plain pass
-- runs this once: its name matches scripts/run-tests' history_ pattern).
-- 1. A transfer: 6 processes move random amounts between two counters with
--    store:update_many while 2 processes read both with get_many: every
--    snapshot must sum to 1000 with both keys at one index (all or none, and
--    atomic reads), and the final balance must be the start minus what the
--    transfers say they moved (no lost update).
-- 2. The linearizability checker over multi-key histories: 8 client processes
--    (txn_client.lua: transactions over two or three of three keys, snapshot
--    reads, single writes) while clients are SIGKILLed and SIGSTOPped in the
--    middle of transactions, and, on RavenDB, replies to transactions are lost
--    after the transaction was applied (each settled by its raft-request-id).
local backends = require "spec.support.backends"
local core = require "cmpxchg.core"
local helpers = require "spec.helpers"
local run = require "spec.support.history.run"

local TRANSFERRERS, READERS = 6, 2
local SECONDS = 5

--- Runs the transfer on `target` (opened by `st`): returns the figures.
local function transfer(st, target)
    assert.is_true((st:transaction({
        { op = "put", key = "acct/a", value = 1000, index = 0 },
        { op = "put", key = "acct/b", value = 0, index = 0 },
    })))
    local go = os.tmpname()
    os.remove(go)
    local procs = {}
    for i = 1, TRANSFERRERS + READERS do
        local p = helpers.start("spec/support/transfer_worker.lua", { target,
            i <= TRANSFERRERS and "transfer" or "read", tostring(SECONDS), go })
        local line = p:read("*l")
        if not (line and line:match("^ready")) then
            error("a worker did not start: " .. tostring(line) .. (p:read("*a") or ""))
        end
        procs[i] = p
    end
    assert(io.open(go, "w")):close()
    local fig = { moved = 0, transfers = 0, reads = 0, torn = {}, unknown = {}, failed = {} }
    for i, p in ipairs(procs) do
        local out = p:read("*a")
        local ok = helpers.pclose(p)
        assert(ok, "worker " .. i .. " failed:\n" .. out)
        for line in out:gmatch("[^\n]+") do
            local moved, n = line:match("^moved (%-?%d+) in (%d+) transfers$")
            if moved then
                fig.moved, fig.transfers = fig.moved + tonumber(moved), fig.transfers + tonumber(n)
            elseif line:match("^read %d+ snapshots$") then
                fig.reads = fig.reads + tonumber(line:match("%d+"))
            elseif line:match("^torn") then
                fig.torn[#fig.torn + 1] = line
            elseif line:match("^unknown") then
                fig.unknown[#fig.unknown + 1] = tonumber(line:match("^unknown (%-?%d+)"))
            else
                fig.failed[#fig.failed + 1] = line
            end
        end
    end
    os.remove(go)
    local map = assert(st:get_many({ "acct/a", "acct/b" }))
    fig.a, fig.b = map["acct/a"].value, map["acct/b"].value
    fig.same_index = map["acct/a"].index == map["acct/b"].index
    return fig
end

--- Whether some subset of the transfers of unknown outcome explains the
-- final balance (each was applied once, or not at all).
local function explained(fig)
    local want = 1000 - fig.moved - fig.a
    local n = #fig.unknown
    assert(n <= 12, "too many transfers of unknown outcome: " .. n)
    for mask = 0, 2 ^ n - 1 do
        local sum, m = 0, mask
        for i = 1, n do
            if m % 2 == 1 then sum = sum + fig.unknown[i] end
            m = math.floor(m / 2)
        end
        if sum == want then return true end
    end
    return false
end

local function transfer_spec(ctx)
    it(ctx.name .. ": a transfer between two counters keeps their sum at every step", function()
        local st = assert(ctx.open())
        local fig = transfer(st, ctx.target())
        io.stderr:write(("\n[transfer, %s] %d processes for %d s: %d transfers (%d of unknown "
            .. "outcome), %d snapshots read, %d torn; final %s + %s\n"):format(ctx.name,
            TRANSFERRERS + READERS, SECONDS, fig.transfers, #fig.unknown, fig.reads, #fig.torn,
            tostring(fig.a), tostring(fig.b)))
        assert.same({}, fig.torn)
        assert.same({}, fig.failed)
        assert.is_true(fig.transfers >= TRANSFERRERS, fig.transfers .. " transfers")
        assert.is_true(fig.reads >= READERS, fig.reads .. " reads")
        assert.equal(1000, fig.a + fig.b)
        assert.is_true(fig.same_index)
        assert.is_true(explained(fig), ("a = %s after moving %d (unknown: %s)"):format(
            tostring(fig.a), fig.moved, table.concat(fig.unknown, " ")))
        st:close()
        helpers.cleanup()
    end)
end

local TXN_CLIENT = "spec/support/history/txn_client.lua"

describe("transactions under contention", function()
    backends.each(transfer_spec, teardown)
end)

describe("history of transactions under faults", function()
    it("embedded: clients SIGKILLed and SIGSTOPped in the middle of transactions", function()
        local path = helpers.tmpdb()
        local cmpxchg = require "cmpxchg"
        assert(cmpxchg.open(path)):close()
        local kills = 0
        local ok, fig = pcall(run.with, { name = "embedded transactions", target = path,
            seconds = 15, think = 20, client = TXN_CLIENT }, function(r)
                for round = 1, 2 do
                    r:pace(round * 5 - 2)
                    local c = r:stop_mid_write()
                    local f = r:fault("SIGKILL", ("client %s in the middle of a %s")
                        :format(c.proc, c.last))
                    assert.is_truthy(r:kill(c), "the killed client was not in the middle of a call")
                    f.met, kills = 1, kills + 1
                    r:progress(20, "after a kill")
                    c = r:stop_mid_write()
                    f = r:fault("SIGSTOP", ("client %s in the middle of a %s, until the others did "
                        .. "30 operations"):format(c.proc, c.last))
                    r:progress(30, "while a client is stopped")
                    r:resume(c)
                    f.met = 1
                end
            end)
        helpers.cleanup()
        assert(ok, fig)
        io.stderr:write(run.summary("embedded transactions", fig))
        assert.is_true(fig.result.ok, fig.report)
        assert.equal(2, kills)
        assert.is_true(fig.ops > 300, fig.ops .. " operations")
    end)

    it("ravendb emulator: replies to transactions lost after they were applied", function()
        local harness = require "spec.support.ravendb_harness"
        local server = harness.server()
        if server.real then pending("needs the emulator's fault injection") return end
        local db = harness.create_database(server)
        local function control(method, path, body) return harness.control(server, method, path, body) end
        local drops, kills = 0, 0
        local ok, fig = pcall(run.with, { name = "ravendb transactions",
            target = server.urls[1] .. "#" .. db, seconds = 15, think = 10, client = TXN_CLIENT },
            function(r)
                for round = 1, 2 do
                    r:pace(round * 5 - 2)
                    for _ = 1, 2 do
                        control("POST", "/faults", { action = "drop_after_apply", method = "POST",
                            path_contains = "/bulk_docs", count = 1 })
                        local f = r:fault("drop", "the reply to a transaction, after applying it")
                        helpers.wait_until(function()
                            return #control("GET", "/faults").faults == 0
                        end, 60, "the dropped reply to land")
                        f.met, drops = 1, drops + 1
                    end
                    local c = r:stop_mid_write()
                    local f = r:fault("SIGKILL", ("client %s in the middle of a %s")
                        :format(c.proc, c.last))
                    r:kill(c)
                    f.met, kills = 1, kills + 1
                    r:progress(20, "after a kill")
                end
            end)
        control("DELETE", "/faults")
        assert(ok, fig)
        harness.delete_database(server, db)
        io.stderr:write(run.summary("ravendb transactions", fig))
        assert.is_true(fig.result.ok, fig.report)
        assert.same({ 4, 2 }, { drops, kills })
        assert.is_true(fig.ops > 300, fig.ops .. " operations")
    end)

    it("etcd cluster: clients SIGKILLed in the middle of transactions, a member paused", function()
        local harness = require "spec.support.etcd_harness"
        local cluster = harness.cluster()
        local prefix = harness.fresh_prefix()
        local kills = 0
        local ok, fig = pcall(run.with, { name = "etcd transactions", seconds = 15, think = 10,
            target = table.concat(cluster.endpoints, ",") .. "#" .. prefix, client = TXN_CLIENT },
            function(r)
                for round = 1, 2 do
                    r:pace(round * 5 - 2)
                    local c = r:stop_mid_write()
                    local f = r:fault("SIGKILL", ("client %s in the middle of a %s")
                        :format(c.proc, c.last))
                    r:kill(c)
                    f.met, kills = 1, kills + 1
                    r:progress(20, "after a kill")
                end
                -- the first member paused with transactions in flight, then resumed
                r:writes_in_flight(3, "before pausing a member")
                local before = core.monotime()
                cluster.run("pause 0")
                local f = r:fault("SIGSTOP", "member m0, then resumed", before)
                r:progress(20, "while a member is paused")
                cluster.run("resume 0")
                r:landed(f)
            end)
        cluster.run("start")
        assert(ok, fig)
        io.stderr:write(run.summary("etcd transactions", fig))
        assert.is_true(fig.result.ok, fig.report)
        assert.equal(2, kills)
        assert.is_true(fig.ops > 300, fig.ops .. " operations")
    end)
end)
