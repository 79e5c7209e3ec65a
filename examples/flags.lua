--- Command-line flags for the examples: `--name VALUE` pairs and switches,
-- waiting for a go-ahead, and how an example ends.
--   local args, err = require("examples.flags").parse(arg, {store = "string",
--       ttl = "number", vanish = "switch"})
-- Returns the flags by name, or nil and what is wrong with the command line.
local flags = {}

function flags.parse(argv, kinds)
    local out, i = {}, 1
    while i <= #argv do
        local name = argv[i]:match("^%-%-([%w-]+)$")
        local kind = name and kinds[name]
        if not kind then return nil, "unknown argument '" .. argv[i] .. "'" end
        if kind == "switch" then
            out[name], i = true, i + 1
        else
            local value = argv[i + 1]
            if kind == "number" then value = tonumber(value) end
            if value == nil then return nil, "--" .. name .. " needs a " .. kind end
            out[name], i = value, i + 2
        end
    end
    return out
end

--- Waits until the file at `path` exists (at most `timeout` seconds, default 60): a
-- signal from whoever runs the example (a test starting processes together).
function flags.wait_for_file(path, timeout)
    local core = require "cmpxchg.core"
    local deadline = core.monotime() + (timeout or 60)
    while core.monotime() < deadline do
        local f = io.open(path, "r")
        if f then
            f:close()
            return true
        end
        core.sleep(0.001)
    end
    return false
end

--- Ends the example with exit status `code`, saying why (store failures,
-- status 3, on stderr).
function flags.finish(code, message)
    (code == 3 and io.stderr or io.stdout):write(message, "\n")
    os.exit(code)
end

return flags
