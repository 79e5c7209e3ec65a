-- coalesce.lua on a fake clock and a fake ngx.semaphore (one coroutine: a
-- wait takes a post when there is one, else lets the time pass): the orders
-- of events that nginx makes rare, made certain.
local helpers = require "spec.helpers"

describe("coalesce (fake clock and semaphore)", function()
    local clock, restore, coalesce, wait, st

    before_each(function()
        clock, restore = helpers.fake_clock(1e9)
        package.loaded["ngx.semaphore"] = {
            new = function(n)
                local s = { n = n }
                function s.count(self) return self.n end
                function s.post(self, k) self.n = self.n + (k or 1) end
                -- s.during(): what other coroutines do while this one waits
                function s.wait(self, t)
                    if self.n > 0 then
                        self.n = self.n - 1
                        return true
                    end
                    self.n = self.n - 1
                    local during = s.during
                    s.during = nil
                    if during then during() end
                    if self.n >= 0 then return true end     -- posted meanwhile
                    self.n = self.n + 1
                    clock.now = clock.now + t
                    return nil, "timeout"
                end
                return s
            end,
        }
        package.loaded["cmpxchg.coalesce"] = nil
        coalesce = require "cmpxchg.coalesce"
        wait = require "cmpxchg.wait"
        st = { backend = { describe = function() return "fake" end },
               origin = { options = {} } }
    end)

    after_each(function()
        restore()
        package.loaded["ngx.semaphore"] = nil
        package.loaded["cmpxchg.coalesce"] = nil
    end)

    --- A waiter whose own wait is a poll's sleep of `pause`.
    local function waiter()
        local w = wait.new(st, "k", "lock", {}, "o")
        w.inner = function(_, ctx, _, pause)
            ctx.sleep(pause)
            return nil
        end
        return w
    end

    it("a same-worker release while the active member is not sleeping (it reads) ends its "
        .. "next sleep at once", function()
        local w = waiter()
        coalesce.change(w, 0, 30, 60)       -- active: sleeps its backoff
        assert.near(30, clock.now, 0.01)
        coalesce.released(st, "k")          -- while it would read the key
        local t0 = clock.now
        coalesce.change(w, 0, 30, 60)
        assert.near(0, clock.now - t0, 0.01)
        coalesce.leave(w)
    end)

    it("a released permit wakes its semaphore's waiters, a released key its campaign's, "
        .. "and nothing else", function()
        local permits = wait.new(st, { prefix = "S/permits/" }, "permits", {}, "o")
        local leader = wait.new(st, "job", "leader", {}, "o")
        for _, w in ipairs({ permits, leader }) do
            w.inner = function(_, ctx, _, pause) ctx.sleep(pause) end
            coalesce.change(w, 0, 30, 60)
        end
        coalesce.released(st, "other/permits/1")
        coalesce.released(st, "s/permits/2")    -- keys are case-insensitive
        coalesce.released(st, "JOB")
        local t0 = clock.now
        coalesce.change(permits, 0, 30, 60)
        coalesce.change(leader, 0, 30, 60)
        assert.near(0, clock.now - t0, 0.01)
        coalesce.change(permits, 0, 30, 60)     -- nothing released since: a whole backoff
        assert.near(30, clock.now - t0, 0.01)
        coalesce.leave(permits)
        coalesce.leave(leader)
    end)

    it("a parked member does not touch the store, and takes over from an active member "
        .. "that stopped showing signs of life", function()
        local active, parked = waiter(), waiter()
        coalesce.change(active, 0, 0.1, 60)
        local looked = 0
        parked.inner = function() looked = looked + 1 end
        local t0 = clock.now
        assert.is_true(coalesce.change(parked, 0, 0.1, 60))     -- its turn: it looks
        assert.equal(0, looked)
        assert.is_true(clock.now - t0 < 5, "took over within the stale bound")
        coalesce.change(parked, 0, 0.1, 60)                   -- now the active one
        assert.equal(1, looked)
        coalesce.leave(parked)
        coalesce.leave(active)
    end)

    it("the active member's acquisition ends: a parked member gets its turn at once",
        function()
        local active, parked = waiter(), waiter()
        coalesce.change(active, 0, 0.1, 60)
        active.group.beat = math.huge        -- alive: only its leaving ends the wait
        active.group.turn.during = function() coalesce.leave(active) end
        local t0 = clock.now
        assert.is_true(coalesce.change(parked, 0, 0.1, 60))
        assert.near(0, clock.now - t0, 0.01)
        coalesce.leave(parked)
    end)

    it("a parked member gives up at its deadline, and no group outlives its waiters",
        function()
        local active, parked = waiter(), waiter()
        coalesce.change(active, 0, 0.1, 60)
        active.group.beat = math.huge        -- alive for ever: never stale
        assert.is_nil(coalesce.change(parked, 0, 0.1, 3))
        coalesce.leave(parked)
        coalesce.leave(active)
        active, parked = nil, nil            -- luacheck: ignore 311
        collectgarbage()
        collectgarbage()
        assert.equal(0, coalesce.count())
    end)
end)

describe("the coalesce option of cmpxchg.open", function()
    local cmpxchg = require "cmpxchg"

    it("is a boolean every store accepts", function()
        for _, v in ipairs({ true, false }) do
            local st = assert(cmpxchg.open(":memory:", { coalesce = v }))
            assert.equal(v, st.origin.options.coalesce)
            st:close()
        end
        assert.has_error(function() cmpxchg.open(":memory:", { coalesce = "no" }) end,
            "bad argument #2 to 'open' (option 'coalesce' must be a boolean, got string)")
    end)
end)
