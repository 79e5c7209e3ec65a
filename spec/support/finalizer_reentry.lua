-- Child of spec/core/embedded_finalizer_spec.lua: compare-failing puts on an
-- embedded store (each pushes the current value, a long string, with a write
-- transaction open), while finalizers that write to the same store run as
-- often as the collector allows. A small heap of its own keeps that timing the
-- same from run to run. Prints what the puts answered wrong and what the
-- finalizers' own calls met.
--   finalizer_reentry.lua STORE-PATH
local core = require "cmpxchg.core"

local path = assert(arg[1], "usage: finalizer_reentry.lua PATH")
local h = assert(core.embedded_open(path))
local value = '"' .. ("x"):rep(100) .. '"'
assert(h:put("taken", value, 0))
local seen = { ok = 0, refused = 0, other = 0 }
local done = false

local function finalizable(fn)
    if newproxy then            -- Lua 5.1 and LuaJIT: only userdata have __gc
        local u = newproxy(true)
        getmetatable(u).__gc = fn
        return u
    end
    return setmetatable({}, { __gc = fn })
end

local function arm()
    finalizable(function()
        if done then return end
        local ok, err = pcall(h.put, h, "other", '"y"', 0)
        if ok then
            seen.ok = seen.ok + 1
        elseif tostring(err):find("inside one of its own calls", 1, true) then
            seen.refused = seen.refused + 1
        else
            seen.other = seen.other + 1
            io.stderr:write(tostring(err), "\n")
        end
        arm()
    end)
end

-- lua5.4 starts in the generational mode; the incremental one, which the other
-- Luas have, runs finalizers from the steps that allocations make
if _VERSION == "Lua 5.4" then collectgarbage("incremental") end
collectgarbage("setpause", 1)
collectgarbage("setstepmul", 1000)
arm()
local wrong = 0
for _ = 1, 300 do
    local ok, _, current = h:put("taken", '"mine"', 0)
    if ok ~= false or current ~= value then wrong = wrong + 1 end
    for _ = 1, 10 do seen.garbage = {} end        -- work for the collector
end
done = true
seen.garbage = nil
collectgarbage()
h:close()
print(("wrong %d refused %d ok %d other %d"):format(wrong, seen.refused, seen.ok, seen.other))
