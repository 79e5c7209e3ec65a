--- The seed's RavenDbProcessMonitor: enter waits until the lock is acquired
-- (a 5-minute lease), exit deletes by the index enter returned, lock gives a
-- lock object for `<close>`.
local lock = require "cmpxchg.lock"
local store = require "cmpxchg.store"

local Monitor = {}
local monitor_mt = { __name = "cmpxchg.Monitor", __index = Monitor }

local monitor = {}

--- monitor = cmpxchg.monitor(store [, opts]): opts as store:lock's, with a
-- 300 s ttl and no timeout by default.
function monitor.new(st, opts)
    store.enter(st, "monitor")
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    if o.ttl == nil then o.ttl = 300 end
    if o.timeout == nil then o.timeout = math.huge end
    lock.options(o, 2, "monitor")   -- check now, not at the first enter
    return setmetatable({ store = st, options = o }, monitor_mt)
end

--- monitor:enter(key) -> index (the fencing token) | nil, err, code
function Monitor:enter(key)
    local l, err, code = lock.acquire(self.store, key, self.options)
    if not l then return nil, err, code end
    return l:token()
end

--- monitor:exit(key, index) -> true | false, "lost" | nil, err, code
function Monitor:exit(key, index)
    local ok, idx, code = self.store:delete(key, index)
    if ok == nil then return nil, idx, code end
    if ok then return true end
    return false, "lost"
end

--- monitor:lock(key) -> lock | nil, err, code
function Monitor:lock(key)
    return lock.acquire(self.store, key, self.options)
end

return monitor
