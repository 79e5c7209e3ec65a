--- The renewal thread's main (csrc/renew.c runs it in the thread's own
-- lua_State): opens a store of its own with the parent store's target and
-- options, and renews every lock the parent hands over with lease.renew, the
-- turn the nginx timer runs too. It talks to the parent only through
-- `mailbox`:
--   mailbox.wait(seconds) -> stop, news (an array of {id =, settings =,
--                            index =, valid =, due =}: a lock handed over)
--   mailbox.claim(id)     -> false when the lock no longer wants renewing
--   mailbox.publish(id, index, valid, lost, reason, renewals)
local json = require "cmpxchg.json"
local lease = require "cmpxchg.lease"
local runtime = require "cmpxchg.runtime"

local OPEN_RETRY = 0.5          -- seconds between attempts to open the store

--- A request of a renewal may not outlast the lease: one that hangs (on a
-- member whose leader just died, say) is cut while there is time to try
-- another node. The thread's backend is its own, so its timeout is set per
-- turn.
local function cap_timeout(backend, default, r)
    if default == nil then return end
    local left = r.valid - runtime.monotime() - 0.25
    backend.timeout = math.max(0.2, math.min(default, left / 2))
end

local function turn(backend, default_timeout, r)
    cap_timeout(backend, default_timeout, r)
    local ok, outcome = pcall(lease.renew, backend, r)
    if not ok then              -- a raise (no memory, say): a failed turn
        r.reason = "lost: renewal failed: " .. tostring(outcome)
        outcome = runtime.monotime() + 0.5 >= r.valid and "lost" or "failed"
    end
    return outcome
end

return function(mailbox, setup_text)
    local setup = assert(json.decode(setup_text))
    local st, backend, default_timeout
    local open_error = "not opened yet"
    local next_open = 0
    local locks = {}            -- id -> lease record, with .due (monotonic)

    --- Opens the thread's store when a renewal `r` is due (and again after a
    -- failure, OPEN_RETRY later). The open asks the cluster (etcd's probe,
    -- RavenDB's topology) and may not outlast the lease either: its requests
    -- are bounded as a renewal's are, not by the store's timeout (5 s on etcd,
    -- 20 s on RavenDB by default, against the 2 s left of a 3 s lease).
    local function open(r)
        if st or runtime.monotime() < next_open then return st end
        local options = {}
        for k, v in pairs(setup.options or {}) do options[k] = v end
        local left = r.valid - runtime.monotime() - 0.25
        options.timeout = math.max(0.2, math.min(options.timeout or math.huge, left / 2))
        local opened, err = require("cmpxchg").open(setup.target, options)
        if not opened then
            open_error, next_open = err, runtime.monotime() + OPEN_RETRY
            return nil
        end
        st, backend = opened, opened.backend
        -- what each renewal's cap starts from: the store's own timeout
        default_timeout = backend.timeout and ((setup.options or {}).timeout
            or backend.default_timeout)
        return st
    end

    local function publish(id, r, lost)
        mailbox.publish(id, r.index, r.valid, lost, r.reason, r.renewals)
    end

    while true do
        local now = runtime.monotime()
        local wake = math.huge
        for _, r in pairs(locks) do wake = math.min(wake, r.due) end
        local stop, news = mailbox.wait(wake == math.huge and 3600 or wake - now)
        if stop then break end
        for _, item in ipairs(news) do
            local settings = json.decode(item.settings)
            locks[item.id] = {
                key = settings.key, owner = settings.owner, options = settings.options,
                index = item.index, valid = item.valid, renewals = 0, due = item.due,
            }
        end
        for id, r in pairs(locks) do
            if runtime.monotime() >= r.due then
                if not mailbox.claim(id) then
                    locks[id] = nil
                else
                    local outcome
                    if open(r) then
                        outcome = turn(backend, default_timeout, r)
                    else
                        r.reason = "lost: renewal cannot open the store: " .. tostring(open_error)
                        outcome = runtime.monotime() + 0.5 >= r.valid and "lost" or "failed"
                    end
                    publish(id, r, outcome == "lost")
                    if outcome == "lost" then
                        locks[id] = nil
                    else
                        r.due = runtime.monotime() + lease.next_turn(r, outcome)
                    end
                end
            end
        end
    end
    if st then st:close() end
end
