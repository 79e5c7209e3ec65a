--- Argument checks shared by the public functions. Misuse raises with the
-- message shape of Lua's own libraries: "bad argument #1 to 'put' (...)".
local core = require "cmpxchg.core"

local check = {}

local math_type = math.type or function(x)      -- Lua 5.1/5.2
    if type(x) ~= "number" then return nil end
    return (x == math.floor(x) and x > -2^63 and x < 2^63) and "integer" or "float"
end

local tointeger = math.tointeger or function(x)
    if math_type(x) == "integer" then return x end
end

check.math_type = math_type
check.tointeger = tointeger

local function typename(v)
    local mt = getmetatable(v)
    return type(mt) == "table" and type(mt.__name) == "string" and mt.__name or type(v)
end
check.typename = typename

--- Raises `msg` at the first caller outside this library, however deep in
-- it the check was made, so the position names the user's own line.
function check.raise(msg)
    local level = 2
    while true do
        local info = debug.getinfo(level, "S")
        if info == nil or not (info.source:find("[/\\]cmpxchg[/\\][%w_]+%.lua$") or
                info.source:find("[/\\]cmpxchg[/\\]transport[/\\][%w_]+%.lua$")) then
            break
        end
        level = level + 1
    end
    error(msg, level)
end

--- Raises "bad argument #n to 'fname' (msg)" at the user's call.
function check.argerror(n, fname, msg)
    check.raise(("bad argument #%d to '%s' (%s)"):format(n, fname, msg))
end
local argerror = check.argerror

function check.type(v, want, n, fname, optional)
    if type(v) ~= want and not (optional and v == nil) then
        argerror(n, fname, ("%s expected, got %s"):format(want, typename(v)))
    end
    return v
end

local key_problem = core.key_problem

--- Why `key` cannot be a compare-exchange key, or nil when it can: blank,
-- too long, not UTF-8, or reserved (one pass in C, csrc/keys.c).
function check.key_problem(key)
    if type(key) ~= "string" then
        return "string expected, got " .. typename(key)
    end
    return key_problem(key)
end

function check.key(key, n, fname)
    if type(key) ~= "string" or key_problem(key) then
        argerror(n, fname, check.key_problem(key))
    end
    return key
end

--- An index: a non-negative integer (floats with an integral value, as
-- lua-cjson gives, are converted). Returns it as an integer.
function check.index(index, n, fname)
    if type(index) ~= "number" then
        argerror(n, fname, "index expected, got " .. typename(index))
    end
    local i = tointeger(index)
    if i == nil and index == math.floor(index) and index > -2^53 and index < 2^53 then
        i = tointeger(index + 0.0) or index     -- 5.1/5.2 have only floats
    end
    if i == nil or index ~= index then
        argerror(n, fname, "index must be an integer, got " .. tostring(index))
    elseif i < 0 then
        argerror(n, fname, "index must not be negative, got " .. tostring(i))
    end
    return i
end

--- A duration in seconds: a non-negative number, not NaN (math.huge allowed
-- only when `infinite_ok`).
function check.seconds(v, name, n, fname, infinite_ok)
    if type(v) ~= "number" or v ~= v or v < 0 or (v == math.huge and not infinite_ok) then
        argerror(n, fname, ("%s must be a non-negative number of seconds, got %s")
            :format(name, tostring(v)))
    end
    return v
end

--[[ The error contract of expected failures (README "Errors") ]]

--- nil, "<code>: <message>", "<code>".
function check.fail(code, fmt, ...)
    return nil, code .. ": " .. fmt:format(...), code
end

--- `s` with its control characters written as \ddd: a server's bytes must
-- not reach a log or a terminal as they are (a line break, an escape).
function check.printable(s)
    return (tostring(s):gsub("[%z\1-\31\127]", function(c) return ("\\%d"):format(c:byte()) end))
end

--- `url` for messages: its password, if any (scheme://user:password@...),
-- as ***, and its control characters as \ddd.
function check.shown_url(url)
    url = tostring(url):gsub("^(%a+://[^/?#@]-:)[^/?#]*@", "%1***@")
    return check.printable(url)
end

--- At most 200 bytes of a reply, for messages, printable.
function check.snippet(s)
    s = tostring(s)
    return check.printable(#s > 200 and s:sub(1, 200) .. "..." or s)
end

--- Checks the options of `opts` that `spec` names ({name = "type"}):
-- their types, and that a number is not NaN. Options `spec` does not name
-- are left alone (another backend's, say).
function check.options(opts, spec, n, fname)
    for name, want in pairs(spec) do
        local v = opts[name]
        if v ~= nil and type(v) ~= want then
            argerror(n, fname, ("option '%s' must be a %s, got %s"):format(name, want,
                typename(v)))
        elseif want == "number" and v ~= nil and v ~= v then
            argerror(n, fname, ("option '%s' is NaN"):format(name))
        end
    end
    return opts
end

return check
