-- Child process: increments the number at KEY ROUNDS times by compare-
-- exchange (re-reading after each lost race) and prints each new index.
--   lua increment.lua TARGET KEY ROUNDS

local store = assert(require("spec.helpers").open_target(arg[1]))
local key, rounds = arg[2], tonumber(arg[3])
for _ = 1, rounds do
    while true do
        local value, index = store:get(key)
        assert(value, index)
        local ok, new_index = store:put(key, value + 1, index)
        assert(ok ~= nil, new_index)
        if ok then
            io.stdout:write(new_index, "\n")
            break
        end
    end
end
store:close()
