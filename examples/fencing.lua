-- Fencing tokens: a lock's lease can run out while its holder is paused (a long GC, a
-- stopped VM, a slow disk), and the holder cannot know when it wakes up. So the
-- resource it protects checks the holder's token: lock:token() strictly increases
-- from one holder of a key to the next, the resource remembers the highest token it
-- has accepted, and refuses a write that carries a lower one.
--
-- Here the resource is a compare-exchange key whose value records that token
-- ({Token =, Data =, Writer =}); a write reads it and is a CAS on the index it read,
-- made only when the writer's token is at least the recorded one (equal: the same
-- holder writing again). Two holders in one process play it out: A takes the lock
-- and writes; A's lease runs out while A does nothing; B takes the lock over and
-- writes; A wakes up and writes late, and is refused.
--
--   lua5.4 examples/fencing.lua [--store TARGET] [--database DB] [--key K] [--ttl SECONDS]
-- TARGET: a store file, a RavenDB URL or an etcd URL (those need --database).
-- Exit: 0 the late write was refused, 2 it was accepted (fencing failed),
--       3 the store failed.

-- run from the checkout without installing: prefer the in-tree build
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

local cmpxchg = require "cmpxchg"

local finish = require("examples.flags").finish

-- math.tointeger is Lua 5.3+; before, every number is a float
local tointeger = math.tointeger or function(x)
    return type(x) == "number" and x == math.floor(x) and x or nil
end

local flags, bad = require("examples.flags").parse(arg, { store = "string",
    database = "string", key = "string", ttl = "number" })
if not flags then finish(3, bad) end
local key = flags.key or "reports/daily"
local lock_key, ttl = "locks/" .. key, flags.ttl or 1

--- Writes `data` to the resource for the holder of `lock`. Returns true and the new
-- index when accepted, false and the recorded token when refused, nil and an error
-- when the store failed.
local writes = 0
local function fenced_write(store, resource, lock, data)
    local token = lock:token()
    writes = writes + 1
    local id = ("%s/%d"):format(lock.owner, writes)    -- this one write, to recognize it
    while true do
        local value, index, code = store:get(resource)
        if type(index) ~= "number" then return nil, index, code end
        -- an earlier attempt whose reply was lost may have been applied
        if type(value) == "table" and value.Writer == id then return true, index end
        local recorded = type(value) == "table" and tonumber(value.Token) or 0
        if token < recorded then return false, tointeger(recorded) or recorded end
        local ok, new_index, failure = store:put(resource,
            { Token = token, Data = data, Writer = id }, index)
        if ok then return true, new_index end
        -- false: someone wrote in between, so decide again on what is there now.
        -- nil: the outcome is unknown; the next read tells (our Writer id or not).
        if ok == nil and failure ~= "timeout" and failure ~= "connect" then
            return nil, new_index, failure
        end
    end
end

local function open()
    local store, err = cmpxchg.open(flags.store, { database = flags.database })
    if not store then finish(3, err) end
    return store
end

-- Two handles, as if two processes: each holder has its own connection.
local store_a, store_b = open(), open()

-- A takes the lock and writes: accepted.
local a, why = store_a:lock(lock_key, { ttl = ttl, timeout = 10 })
if not a then finish(3, "A could not lock: " .. why) end
print(("A holds %s with token %d (lease of %g s)"):format(lock_key, a:token(), ttl))
local ok, x = fenced_write(store_a, key, a, "report by A")
if ok == nil then finish(3, x) end
print(ok and ("A writes %s: accepted (index %d)"):format(key, x)
    or ("A writes %s: refused, token %d is recorded"):format(key, x))

-- A stalls. B waits for the lock: A never releases, so B gets it only once A's lease
-- has run out, by taking it over.
print(("A stalls; B waits for the lock (up to %g s)"):format(ttl + 10))
local b
b, why = store_b:lock(lock_key, { ttl = 30, timeout = ttl + 10 })
if not b then finish(3, "B could not lock: " .. why) end
print(("B took over the expired lease: token %d (takeovers %d); A still holds it? %s")
    :format(b:token(), b.takeovers, tostring(a:is_held())))
ok, x = fenced_write(store_b, key, b, "report by B")
if ok == nil then finish(3, x) end
if not ok then finish(3, ("B was refused: token %d is recorded"):format(x)) end
print(("B writes %s: accepted (index %d)"):format(key, x))

-- A wakes up and, not knowing its lease is gone, writes with its old token.
ok, x = fenced_write(store_a, key, a, "late report by A")
if ok == nil then finish(3, x) end
local verdict = ok and ("A's late write with token %d: ACCEPTED (fencing failed)")
    :format(a:token())
    or ("A's late write with token %d: refused, token %d is recorded"):format(a:token(), x)
print(verdict)
local value = store_b:get(key)
print(("%s now holds %q, written with token %d"):format(key, tostring(value and value.Data),
    tointeger(value and value.Token) or -1))

-- Clean up: A's release finds the lease taken over; B releases; the resource goes.
local released, lost = a:release()
print(("A releases: %s%s"):format(tostring(released), lost and (" (" .. lost .. ")") or ""))
b:release()
local _, index = store_b:get(key)
if type(index) == "number" and index > 0 then store_b:delete(key, index) end
store_a:close()
store_b:close()
if ok then finish(2, "the stale write got through") end
finish(0, "the stale write was refused")
