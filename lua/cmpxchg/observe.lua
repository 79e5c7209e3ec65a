--- Observability hooks: what locks, permits and elections do, told to the
-- functions registered with cmpxchg.observe(fn), so that a user can count
-- and time them (a Prometheus exporter, a log line) without wrapping every
-- call. Per Lua state: inside nginx per worker; the renewal thread's own
-- state has none (what it did reaches the lock, and so the observers, at the
-- next call into the lock or its store).
--
-- Cheap when unused: every place that reports checks `observe.active`, one
-- table field, before it builds the event's table.
--
-- An observer runs inside the library's call (after the store answered, never
-- between a write and its bookkeeping), so it must not raise: what it raises
-- is caught and written to the error log (stderr; nginx's error.log inside
-- nginx), and the call goes on as if nothing happened.
local observe = { active = false }

local observers = {}

local ngx = rawget(_G, "ngx")

local function complain(err)
    local msg = "cmpxchg: an observer raised: " .. tostring(err)
    if type(ngx) == "table" and type(ngx.log) == "function" then
        ngx.log(ngx.ERR, msg)
    else
        io.stderr:write(msg, "\n")
    end
end

--- Registers `fn(event, info)`; returns a function that removes it again.
function observe.add(fn)
    local entry = { fn = fn }
    observers[#observers + 1] = entry
    observe.active = true
    return function()
        for i = #observers, 1, -1 do
            if observers[i] == entry then table.remove(observers, i) end
        end
        observe.active = #observers > 0
        return true
    end
end

--- Tells every observer `event` with `info` (a table the observers share:
-- they must not change it).
function observe.emit(event, info)
    -- a copy: an observer may remove itself (or another) while it runs
    local list = {}
    for i = 1, #observers do list[i] = observers[i].fn end
    for i = 1, #list do
        local ok, err = pcall(list[i], event, info)
        if not ok then complain(err) end
    end
end

return observe
