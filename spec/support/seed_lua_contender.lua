--- Child process: our side of the contention with the seed's locks
-- (spec/support/ravendb/seed_locks.js) on one RavenDB key.
--
--   lua seed_lua_contender.lua --urls U[,U...] --database DB --key KEY
--       [--field ExpiresAt|ReservedUntil] [--lease S] [--hold S] [--rounds N] [--gap S]
--       [--log FILE] [--counter FILE] [--ready FILE --go FILE] [--vanish]
--
-- Each round takes `store:lock(key, {expires_field = FIELD, ttl = LEASE, timeout = 60})`,
-- holds it HOLD seconds, releases it and pauses a random 0..GAP seconds. Every critical
-- section appends "lua <token> <t_start> <t_end>" to LOG, on the wall clock (core.time(),
-- CLOCK_REALTIME) that the Node side reads too: t_start right after the lock was returned,
-- t_end right before the release. With --counter, the section reads the number in the
-- file and writes it plus one (an overlap loses an update). With --vanish it acquires once,
-- prints {"token", "written", "valid_until"} as JSON and exits without releasing (a holder
-- that crashed). Otherwise it prints {"sections": [{"token", "takeovers", "released"}]}.
local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"

local opts = { field = "ExpiresAt", lease = 10, hold = 0, rounds = 1, gap = 0 }
local i = 1
while i <= #arg do
    local name = arg[i]
    if name == "--vanish" then
        opts.vanish = true
        i = i + 1
    else
        local value = arg[i + 1]
        local field = name:match("^%-%-(%a+)$")
        assert(field and value, "bad argument " .. tostring(name))
        if field == "lease" or field == "hold" or field == "rounds" or field == "gap" then
            opts[field] = assert(tonumber(value), name .. " needs a number")
        else
            opts[field] = value
        end
        i = i + 2
    end
end
assert(opts.urls and opts.database and opts.key, "--urls, --database and --key are required")

local urls = {}
for url in opts.urls:gmatch("[^,]+") do urls[#urls + 1] = url end
local store = assert(cmpxchg.open(urls, { database = opts.database }))
math.randomseed(core.pid(), math.floor(core.time() * 1e6))

local function exists(file)
    local f = io.open(file, "r")
    if f then f:close() end
    return f ~= nil
end

local function bump(file)
    local f = io.open(file, "r")
    local n = f and tonumber(f:read("*a")) or 0
    if f then f:close() end
    f = assert(io.open(file, "w"))
    f:write(tostring(n + 1))
    f:close()
end

local function log(token, t0, t1)
    if not opts.log then return end
    local f = assert(io.open(opts.log, "a"))
    f:write(("lua %d %.6f %.6f\n"):format(token, t0, t1))
    f:close()
end

-- connected (topology read at open) and ready; wait until everyone is
if opts.ready then
    local f = assert(io.open(opts.ready, "w"))
    f:write(core.pid(), "\n")
    f:close()
end
if opts.go then
    while not exists(opts.go) do core.sleep(0.005) end
end

local lock_opts = { expires_field = opts.field, ttl = opts.lease, timeout = 60 }

if opts.vanish then
    local l = assert(store:lock(opts.key, lock_opts))
    local t0 = core.time()
    local value = store:get(opts.key)
    log(l:token(), t0, l:valid_until())
    io.write(json.encode({ token = l:token(), written = value[opts.field],
                           valid_until = l:valid_until() }), "\n")
    io.stdout:flush()
    os.exit(0)          -- no release, no close: the lease stays until it expires
end

local sections = {}
for _ = 1, opts.rounds do
    local l = assert(store:lock(opts.key, lock_opts))
    local t0 = core.time()
    if opts.counter then bump(opts.counter) end
    if opts.hold > 0 then core.sleep(opts.hold) end
    local t1 = core.time()
    log(l:token(), t0, t1)
    local released = l:release()
    sections[#sections + 1] = { token = l:token(), takeovers = l.takeovers, released = released,
                                attempts = l.attempts }
    if opts.gap > 0 then core.sleep(math.random() * opts.gap) end
end
store:close()
io.write(json.encode({ sections = sections }), "\n")
