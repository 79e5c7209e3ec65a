--- Auto-renew inside a simulation (spec/support/sim.lua): renewal.start gives
-- each lock a renewer that is a simulated client of its own, running the
-- real renewal turn (lease.renew) every lease.next_turn, as the nginx timer
-- chain does; so a test can kill a holder together with its renewals.
--   local fake = require("spec.support.sim_renewal").install(sim, backend)
--   fake.renewers[lock]     -- {client =, lost =, stopped =}
--   fake.kill(lock)         -- the holder's renewals die with it
--   fake.restore()
local lease = require "cmpxchg.lease"
local renewal = require "cmpxchg.renewal"
local runtime = require "cmpxchg.runtime"

local M = {}

function M.install(sim, backend)
    local saved = { start = renewal.start, available = renewal.available }
    local fake = { renewers = setmetatable({}, { __mode = "k" }) }

    renewal.available = function() return true end
    renewal.start = function(l, apply)
        local o = l.options
        local rec = { key = l.key, owner = l.owner, index = l.index, valid = l.valid_mono,
                      renewals = 0, options = { ttl = o.ttl, clock_skew = o.clock_skew,
                      expires_field = o.expires_field, expires_grace = o.expires_grace } }
        local r = { rec = rec, lost = false, stopped = false }
        function r.state(self)
            return rec.index, rec.valid, self.lost, self.lost and rec.reason or nil, rec.renewals
        end
        function r.stop(self)
            self.stopped = true
            return self:state()
        end
        r.client = sim.spawn("renewer " .. l.key, function()
            local outcome = "renewed"
            while true do
                runtime.sleep(lease.next_turn(rec, outcome))
                if r.stopped then return end
                outcome = lease.renew(backend, rec)
                if outcome == "lost" then
                    r.lost = true
                    return
                end
            end
        end)
        l.renewer = r
        fake.renewers[l] = r
        local s = l.store.renewal
        if s == nil then
            s = { locks = setmetatable({}, { __mode = "k" }) }
            l.store.renewal = s
        end
        s.locks[l] = apply
    end

    function fake.kill(l)
        local r = fake.renewers[l]
        if r then sim.kill(r.client) end
    end

    function fake.restore()
        for k, v in pairs(saved) do renewal[k] = v end
    end

    return fake
end

return M
