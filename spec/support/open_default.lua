-- Child process: opens the store with no target, in a private HOME unless
-- CMPXCHG_URL is set, and says where it is.
local cmpxchg = require "cmpxchg"

if not os.getenv("CMPXCHG_URL") then
    local st = assert(cmpxchg.open())
    local expected = cmpxchg.default_path()
    assert(tostring(st) == "cmpxchg.Store (embedded " .. expected .. ")", tostring(st))
    st:close()
    print("default ok")
else
    print("url")
    local st = assert(cmpxchg.open())
    print(tostring(st))
    st:close()
end
