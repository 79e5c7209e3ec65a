-- Loaded by the ASan run (busted --helper): the collector never rests (pause
-- 100: each cycle starts as the last ends), so finalizers run soon after an
-- object is dropped and a use after free or a missing reference in the C
-- core shows up. $CMPXCHG_GC_STEPMUL sets how much it collects per byte
-- allocated: 1000 (the default, as often as Lua allows) for the C core's own
-- specs; scripts/run-tests gives the integration specs 200 (a run 2.3 times
-- the usual collector's, not 6.7).
local stepmul = tonumber(os.getenv("CMPXCHG_GC_STEPMUL")) or 1000
if collectgarbage("incremental", 100, stepmul) == nil then  -- 5.1-5.3
    collectgarbage("setpause", 100)
    collectgarbage("setstepmul", stepmul)
end
