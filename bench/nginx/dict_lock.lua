--- lua-resty-lock's mechanism, for the benchmark's reference where the
-- library itself is not installed (Debian has no package of it): a lock is
-- ngx.shared.DICT:add(key, true, exptime); a waiter that finds it taken
-- sleeps `step` (0.001 s), multiplied by `ratio` (2) after each look, capped
-- at `max_step` (0.5 s), until `timeout`; unlock deletes the key. The same
-- defaults and the same calls as lua-resty-lock's lock()/unlock(), written
-- from its documentation (no code of it here).
-- luacheck: std max+ngx_lua (nginx's globals: this file runs inside nginx only)
local dict_lock = {}
dict_lock.__index = dict_lock

--- lock:new(dict_name [, opts]) -> lock object (opts: exptime, timeout, step, ratio, max_step)
function dict_lock.new(_, dict_name, opts)
    opts = opts or {}
    local dict = ngx.shared[dict_name]
    if not dict then return nil, "dictionary not found" end
    return setmetatable({ dict = dict, exptime = opts.exptime or 30, timeout = opts.timeout or 5,
        step = opts.step or 0.001, ratio = opts.ratio or 2, max_step = opts.max_step or 0.5 },
        dict_lock)
end

--- lock(key) -> seconds waited | nil, "timeout" | nil, err (and `requests`:
-- the dictionary calls it made, the benchmark's count)
function dict_lock:lock(key)
    local dict = self.dict
    self.requests = 1
    local ok, err = dict:add(key, true, self.exptime)
    if ok then
        self.key = key
        return 0
    end
    if err ~= "exists" then return nil, err end
    local step, left, elapsed = self.step, self.timeout, 0
    while left > 0 do
        if step > left then step = left end
        ngx.sleep(step)
        elapsed, left = elapsed + step, left - step
        self.requests = self.requests + 1
        ok, err = dict:add(key, true, self.exptime)
        if ok then
            self.key = key
            return elapsed
        end
        if err ~= "exists" then return nil, err end
        step = math.min(math.max(0.001, step * self.ratio), self.max_step)
    end
    return nil, "timeout"
end

function dict_lock:unlock()
    local key = self.key
    if key == nil then return nil, "unlocked" end
    self.key = nil
    self.dict:delete(key)
    return true
end

return dict_lock
