-- Loaded by the ASan run (busted --helper): collect as often as Lua allows,
-- so finalizers run between nearly every allocation and a use after free or
-- a missing reference in the C core shows up.
if collectgarbage("incremental", 100, 1000) == nil then  -- 5.1-5.3
    collectgarbage("setpause", 100)
    collectgarbage("setstepmul", 1000)
end
