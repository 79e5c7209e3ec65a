--- The lease a lock holds: its value (the object the C# samples write), the
-- write that settles an unknown outcome by reading back, and one renewal
-- turn. Acquire and extend (lock.lua), the nginx timer (timer_renewer.lua)
-- and the renewal thread (renew_worker.lua) all write leases through here,
-- over the backend interface (store.lua).
--
-- The value is {"ExpiresAt": "<UTC with 7 fractional digits>Z", "Owner",
-- "Host", "Pid"}, so C# clients that run the seed's RavenDbProcessMonitor or
-- the docs' SharedResource contend with us on the same keys.
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"
local runtime = require "cmpxchg.runtime"

local lease = {}

--- The value written for a lease that ends at wall-clock time `ends`.
function lease.value(o, owner, ends)
    return {
        [o.expires_field] = core.format_time(ends),
        Owner = owner,
        Host = runtime.hostname,
        Pid = runtime.pid(),
    }
end

--- When the lease in `value` ends (epoch seconds), or nil when it names none.
function lease.ends(value, field)
    if type(value) ~= "table" then return nil end
    local at = value[field]
    if type(at) ~= "string" then return nil end
    return core.parse_time(at)
end

--- Who holds the lease in `value` and until when, for messages. The value
-- comes from the store: anything may be in it.
function lease.describe_holder(value, field)
    if type(value) ~= "table" then return "a value that is not a lock" end
    local who = type(value.Owner) == "string" and value.Owner or "an unknown owner"
    if type(value.Host) == "string" then who = who .. "@" .. value.Host end
    local pid = value.Pid
    if type(pid) == "number" then       -- cjson decodes 42 as 42.0; 1.5 is no pid
        who = ("%s (pid %s)"):format(who, pid == math.floor(pid) and ("%.0f"):format(pid)
            or tostring(pid))
    end
    local at = value[field]
    return who .. " until " .. (type(at) == "string" and at or "an unknown time")
end

-- failures after which the write may or may not have been applied
local AMBIGUOUS = { timeout = true, connect = true }
lease.AMBIGUOUS = AMBIGUOUS

--[[ lease.write(backend, key, o, owner, index [, again]) -> w: writes a new
lease with `index` (0: create). The monotonic and wall times are taken
*before* the request is sent: the lease is counted from then, so it is never
thought longer than it is. w has:
  ok       true: our lease is written (w.index, w.value); false: the compare failed
           (w.index, w.current: the lease there now, 0 and nil when none);
           nil: the store failed (w.err, w.code)
  mono, wall  when the write started
  unapplied   (with ok == false) the write's outcome was unknown, and a read
              found it not applied: w.err, w.code tell why it was unknown
  again       (with ok == nil) the write, whose outcome is still unknown, to
              pass as `again` to the next lease.write of this lease: it is
              sent again as it was rather than a new one (write-id backends)
A write whose outcome is unknown (a timeout or a dropped connection, after
the backend's own retries) is settled:
* on a backend whose writes carry an id that the server deduplicates
  (backend.write_ids: RavenDB's raft-request-id), by sending the very same
  write again: the server applies it at most once and answers as it did the
  first time, so that answer is definite. A read could not settle it there: a
  follower that lags answers with the state from before the write;
* elsewhere by reading the key back: the lease is ours exactly when the value
  there carries our owner id and the expiry we just wrote. ]]
function lease.write(backend, key, o, owner, index, again)
    local w = again
    if w == nil then
        local mono, wall = runtime.monotime(), runtime.time()
        local ends = wall + o.ttl
        local value = lease.value(o, owner, ends)
        w = { mono = mono, wall = wall, index = index, value = value,
              text = assert(json.encode(value)), expires = ends + o.expires_grace,
              id = backend.write_ids and runtime.uuid() or nil }
    end
    local mono, wall, value = w.mono, w.wall, w.value
    local ok, idx, current = backend:put(key, w.text, w.index, w.expires, w.id)
    if ok ~= nil then
        return { ok = ok, index = idx, current = current, mono = mono, wall = wall, value = value }
    end
    local err, code = idx, current
    if AMBIGUOUS[code] and w.id then
        ok, idx, current = backend:put(key, w.text, w.index, w.expires, w.id)
        if ok ~= nil then
            return { ok = ok, index = idx, current = current, mono = mono, wall = wall,
                     value = value }
        end
        if AMBIGUOUS[current] then err, code = idx, current end
        return { ok = nil, err = err, code = code, mono = mono, wall = wall, again = w }
    elseif AMBIGUOUS[code] then
        local now_index, now_value = backend:get(key)
        if type(now_index) == "number" then         -- the read worked: settled
            if type(now_value) == "table" and now_value.Owner == owner and
                    now_value[o.expires_field] == value[o.expires_field] then
                return { ok = true, index = now_index, mono = mono, wall = wall, value = value }
            end
            return { ok = false, index = now_index, current = now_value, mono = mono,
                     wall = wall, unapplied = true, err = err, code = code }
        end
    end
    return { ok = nil, err = err, code = code, mono = mono, wall = wall }
end

--- release's delete of the lease at `index`, settled as lease.write settles:
-- ok, index, code as backend:delete, plus the id to pass as `id` to the next
-- attempt while the outcome stays unknown (write-id backends), so that a
-- retried release sends the same delete again.
function lease.delete(backend, key, index, id)
    id = id or (backend.write_ids and runtime.uuid() or nil)
    local ok, idx, code = backend:delete(key, index, id)
    if ok == nil and AMBIGUOUS[code] then
        if id then
            local ok2, idx2, code2 = backend:delete(key, index, id)
            if ok2 ~= nil then return ok2, idx2, nil end
            if not AMBIGUOUS[code2] then return nil, idx, code, id end
            return nil, idx2, code2, id
        end
        -- unknown outcome: gone means deleted (by us, or it expired); another
        -- index means it is someone else's now; ours still means not applied
        local now_index = backend:get(key)
        if now_index == 0 then
            return true, 0
        elseif now_index ~= nil and now_index ~= index then
            return false, now_index
        end
    end
    return ok, idx, code
end

--[[ lease.renew(backend, r) -> "renewed" | "lost" | "failed": one renewal
turn of the lease r = {key, owner, options, index, valid (its end on the
monotonic clock), renewals}, DistributedLock's renew-or-validate:
  renewed  written with the held index: r.index, r.valid, r.renewals move on
  lost     the lease is someone else's now, or no time is left to try again
           (r.reason says which)
  failed   the store failed and the lease still runs: try again soon
           (r.reason says why)
A write found not applied after an unknown outcome leaves the key at the
held index: the lease is still ours, and the turn merely failed. A write whose
outcome stays unknown is sent again, as it was, at the next turn (r.again). ]]
function lease.renew(backend, r)
    local o = r.options
    local w = lease.write(backend, r.key, o, r.owner, r.index, r.again)
    r.again = w.again
    if w.ok then
        r.index, r.valid = w.index, w.mono + o.ttl - o.clock_skew
        r.renewals = r.renewals + 1
        return "renewed"
    elseif w.ok == false and not (w.unapplied and w.index == r.index) then
        r.reason = "lost: the lease was taken over"
        return "lost"
    end
    r.reason = "lost: renewal failed: " .. tostring(w.err)
    if runtime.monotime() + 0.5 >= r.valid then return "lost" end
    return "failed"
end

--- Seconds until the next turn after `outcome`: a third of the lease after
-- a renewal, soon after a failure.
function lease.next_turn(r, outcome)
    local ttl = r.options.ttl
    if outcome == "renewed" then return ttl / 3 end
    return math.min(0.5, ttl / 12)
end

return lease
