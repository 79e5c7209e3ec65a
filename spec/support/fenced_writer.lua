--- The fencing rule for the tests, and a child process that is paused while it
-- holds a lock.
--
-- The rule (the same as examples/fencing.lua): a protected resource is a key whose
-- value records the highest fencing token it has accepted, {Token =, Data =,
-- Writer =}. A write carrying `token` is a CAS on the index just read, made only
-- when `token` is at least the recorded one (equal: the same holder writing
-- again); a lower token is refused. `Writer` is an id of that one write, so a
-- write whose outcome is unknown (a lost reply) is recognized when read back.
--
-- As a module:
--   local fenced = require "spec.support.fenced_writer"
--   ok, x = fenced.write(store, key, token, data [, timeout])
--   -- true, index | false, recorded token | nil, err, code
--
-- As a child process:
--   lua fenced_writer.lua TARGET LOCK_KEY RESOURCE_KEY TTL GO_FILE
-- takes LOCK_KEY with TTL, makes a fenced write with its token, says
-- "held TOKEN PID", waits (at most 60 s) until
-- GO_FILE exists, then makes its fenced write with that token and says
-- "accepted INDEX" (exit 2), "refused RECORDED" (exit 0) or "failed ERR" (exit 3).
-- The test stops it (SIGSTOP) after "held" and lets it go once its lease was
-- taken over and written past: the late write of a paused holder.
local core = require "cmpxchg.core"

local fenced = {}

--- Writes `data` to `key` for the holder of `token`, retrying store failures
-- until `timeout` seconds (default 30) pass.
function fenced.write(store, key, token, data, timeout)
    local id = core.uuid()
    local deadline = core.monotime() + (timeout or 30)
    local err, code
    while true do
        local value, index, gcode = store:get(key)
        if type(index) == "number" then
            if type(value) == "table" and value.Writer == id then
                return true, index      -- an earlier attempt of ours was applied
            end
            local recorded = type(value) == "table" and tonumber(value.Token) or 0
            if token < recorded then return false, (math.tointeger or tonumber)(recorded) or recorded end
            local ok, idx, pcode = store:put(key, { Token = token, Data = data, Writer = id },
                index)
            if ok then return true, idx end
            -- false: someone wrote in between; nil: unknown outcome. Either way the
            -- next read decides.
            if ok == nil then err, code = idx, pcode end
        else
            err, code = index, gcode
        end
        if core.monotime() > deadline then
            return nil, err or "timeout: the resource kept changing", code or "timeout"
        end
        if err then core.sleep(0.05) end
    end
end

if ... == "spec.support.fenced_writer" then return fenced end

-- the child process
local target, lock_key, resource_key, ttl, go_file =
    arg[1], arg[2], arg[3], tonumber(arg[4]), arg[5]
local helpers = require "spec.helpers"
local store = assert(helpers.open_target(target))
local lock = assert(store:lock(lock_key, { ttl = ttl, timeout = 10 }))
assert(fenced.write(store, resource_key, lock:token(), "first write from " .. core.pid()))
io.stdout:write(("held %d %d\n"):format(lock:token(), core.pid()))
io.stdout:flush()
-- The holder checked its lease here and found it valid; the pause (SIGSTOP)
-- comes between that check and the write, which is what fencing is for.
local deadline = core.monotime() + 60
while not helpers.file_exists(go_file) do
    if core.monotime() > deadline then os.exit(4) end
    core.sleep(0.01)
end
local ok, x, code = fenced.write(store, resource_key, lock:token(), "late write from " .. core.pid())
local released, why = lock:release()
io.stdout:write(("release %s %s\n"):format(tostring(released), tostring(why)))
if ok then
    io.stdout:write(("accepted %d\n"):format(x))
    os.exit(2)
elseif ok == false then
    io.stdout:write(("refused %d\n"):format(x))
    os.exit(0)
end
io.stdout:write(("failed %s %s\n"):format(tostring(code), tostring(x)))
os.exit(3)
