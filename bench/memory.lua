--- The memory check of the benchmark: one process does N_EMBEDDED operations
-- on an embedded store, then N_HTTP on a RavenDB node, cycling put (create),
-- put (CAS), get and delete over 100 keys, and prints for each part
-- "rss KIND OPS START END" (bytes; START after the first 1% of the part, once
-- caches and the allocator have settled). Also run under valgrind, shortly.
--   lua5.4 bench/memory.lua DB_PATH RAVENDB_URL N_EMBEDDED N_HTTP
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

local cmpxchg = require "cmpxchg"

local path, url, n_embedded, n_http = arg[1], arg[2], tonumber(arg[3]), tonumber(arg[4])
assert(path and url and n_embedded and n_http, "usage: memory.lua DB URL N_EMBEDDED N_HTTP")

local function rss()
    local f = assert(io.open("/proc/self/statm"))
    local _, pages = f:read("n", "n")     -- size, then resident pages
    f:close()
    return pages * 4096
end

local VALUE = { n = 42, s = "bench value", list = { 1, 2, 3 } }

local function cycle(st, n, kind)
    local indexes, start = {}, nil
    local settle = math.max(4, n // 100)
    for i = 0, n - 1 do
        if i == settle then
            collectgarbage()
            start = rss()
        end
        local slot = i // 4 % 100
        local key = "mem/" .. slot
        local step = i % 4
        if step == 0 then
            local ok, idx = st:put(key, VALUE, 0)
            assert(ok, "put0 failed")
            indexes[slot] = idx
        elseif step == 1 then
            local ok, idx = st:put(key, VALUE, indexes[slot])
            assert(ok, "putcas failed")
            indexes[slot] = idx
        elseif step == 2 then
            local _, idx = st:get(key)
            assert(idx == indexes[slot], "get failed")
        else
            assert(st:delete(key, indexes[slot]), "delete failed")
        end
    end
    collectgarbage()
    io.write(("rss %s %d %d %d\n"):format(kind, n, start or rss(), rss()))
    io.stdout:flush()
end

local st = assert(cmpxchg.open(path))
cycle(st, n_embedded, "embedded")
st:close()
st = assert(cmpxchg.open(url, { database = "bench" }))
cycle(st, n_http, "http")
st:close()
