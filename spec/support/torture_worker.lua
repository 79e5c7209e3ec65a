--- Child process of the torture test (spec/support/torture.lua): takes LOCK_KEY
-- until it has entered ROUNDS critical sections, and in each makes a fenced write
-- (spec/support/fenced_writer.lua) to RESOURCE_KEY with its token.
--   lua torture_worker.lua TARGET LOCK_KEY RESOURCE_KEY LOGFILE ROUNDS TTL ID [PERMITS | fair]
-- With PERMITS, LOCK_KEY is a semaphore of that many permits: each section holds
-- one permit (SLOT, 1..PERMITS) and writes to RESOURCE_KEY/SLOT with its token,
-- since a permit's token fences what that permit protects. With "fair", the lock is
-- taken with fair = true (its waiters queue: queue.lua).
-- TARGET: a store file, or "URL#database" where URL may list several endpoints
-- separated by commas.
--
-- Every event is one line appended to the shared LOGFILE with a single write(2)
-- (the file is opened for appending, each line is flushed on its own), times on
-- the wall clock, which the processes of one machine share:
--   start ID PID
--   enter TOKEN PID WALLTIME LEASE_END TAKEOVERS SLOT   holding the lock (SLOT 0)
--                                                       or permit SLOT from now
--   write TOKEN accepted INDEX | refused RECORDED | failed CODE
--   leave TOKEN PID WALLTIME                       before the release is sent
--   lost TOKEN PID CODE                            the release did not return true
--   failed PID CODE                                lock() gave up (tried again)
--   done PID | crash PID MESSAGE
-- The test SIGKILLs and SIGSTOPs workers between their enter and leave lines.
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"
local fenced = require "spec.support.fenced_writer"
local helpers = require "spec.helpers"

local target, lock_key, resource_key, logfile, rounds, ttl, id, permits =
    arg[1], arg[2], arg[3], arg[4], tonumber(arg[5]), tonumber(arg[6]), arg[7], tonumber(arg[8])
local fair = arg[8] == "fair" or nil
local pid = core.pid()

local log = assert(io.open(logfile, "a"))
log:setvbuf("full")
local function note(fmt, ...)
    log:write(fmt:format(...) .. "\n")
    log:flush()
end

local function open()
    local urls, database = target:match("^(%a+://.-)#(.+)$")
    if urls and urls:find(",", 1, true) then
        local list = {}
        for url in urls:gmatch("[^,]+") do list[#list + 1] = url end
        return cmpxchg.open(list, { database = database, timeout = 2 })
    end
    return helpers.open_target(target, urls and { timeout = 2 } or nil)
end

-- a cluster may be electing a leader right now
local store, err
for _ = 1, 100 do
    store, err = open()
    if store then break end
    core.sleep(0.1)
end
if not store then error("cannot open " .. target .. ": " .. tostring(err)) end
note("start %s %d", id, pid)

-- an error is logged, so that the test hears of it at once
local ok, crash = xpcall(function()
    local entered, failures = 0, 0
    local sem = permits and store:semaphore(lock_key, permits)
    while entered < rounds do
        local lock, why, code
        if sem then
            lock, why, code = sem:acquire({ ttl = ttl, timeout = 30 })
        else
            lock, why, code = store:lock(lock_key, { ttl = ttl, timeout = 30, fair = fair })
        end
        if not lock then
            failures = failures + 1
            note("failed %d %s", pid, tostring(code))
            if failures > 50 then error("lock keeps failing: " .. tostring(why)) end
            core.sleep(0.05)
        else
            entered = entered + 1
            local token = lock:token()
            local slot = lock.slot or 0
            note("enter %d %d %.7f %.7f %d %d", token, pid, core.time(), lock:valid_until(),
                lock.takeovers, slot)
            core.sleep(0.02 + 0.04 * math.random())       -- work before the write
            local ok, x, wcode = fenced.write(store, sem and resource_key .. "/" .. slot
                or resource_key, token, ("%s/%d"):format(id, entered))
            if ok then
                note("write %d accepted %d", token, x)
            elseif ok == false then
                note("write %d refused %d", token, x)
            else
                note("write %d failed %s", token, tostring(wcode))
            end
            core.sleep(0.005 + 0.01 * math.random())      -- work after it
            note("leave %d %d %.7f", token, pid, core.time())
            local released, _, rcode = lock:release()
            if released ~= true then note("lost %d %d %s", token, pid, tostring(rcode or "lost")) end
        end
    end
end, debug.traceback)
if not ok then
    note("crash %d %s", pid, (tostring(crash):gsub("%s+", " ")))
    os.exit(1)
end
note("done %d", pid)
log:close()
store:close()
