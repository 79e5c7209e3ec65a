--- Shared test helpers: temporary store files, child Lua processes, polling.
local helpers = {}

helpers.lua = os.getenv("LUA") or "lua5.4"
helpers.cpath = os.getenv("CMPXCHG_TEST_CPATH") or "./?.so"

--- Whether this Lua has to-be-closed variables (5.4+): specs that use `<close>`
-- live in files loaded only then (named *_54_spec.lua, or required behind this).
helpers.has_close = (loadstring or load)("local x <close> = nil") ~= nil

--- Replaces the runtime's clocks and sleep (runtime.lua is the library's one
-- seam for them) with a fake clock that only sleeps move, for exact unit
-- tests of waits. Returns the clock ({now = seconds, sleeps = {each sleep}};
-- the wall clock is wall0 + now) and a function that restores the real one.
function helpers.fake_clock(wall0)
    local runtime = require "cmpxchg.runtime"
    local saved = { monotime = runtime.monotime, time = runtime.time, sleep = runtime.sleep }
    local clock = { now = 0, sleeps = {} }
    runtime.monotime = function() return clock.now end
    runtime.time = function() return (wall0 or 0) + clock.now end
    runtime.sleep = function(s)
        assert(s >= 0, "negative sleep")
        clock.sleeps[#clock.sleeps + 1] = s
        clock.now = clock.now + s
    end
    return clock, function()
        for k, v in pairs(saved) do runtime[k] = v end
    end
end

--- The whole text of file `path`.
function helpers.read_file(path)
    local f = assert(io.open(path))
    local s = f:read("*a")
    f:close()
    return s
end

--- Writes `text` to file `path`, replacing it.
function helpers.write_file(path, text)
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
end

--- Starts spec/support/http_test_server.js (the transport specs' local
-- server; without the ASan run's preload: node is not what it checks).
-- Returns its base URL and a function that stops it.
function helpers.http_test_server()
    local server = assert(io.popen("exec env -u LD_PRELOAD node spec/support/http_test_server.js",
        "r"))
    local line = assert(server:read("*l"), "the test server did not start (is node installed?)")
    local port, pid = line:match("^(%d+) (%d+)$")
    return "http://127.0.0.1:" .. port, function()
        os.execute("kill " .. pid)
        server:close()
    end
end

local created = {}

--- A fresh path for an embedded store file, removed by helpers.cleanup().
function helpers.tmpdb()
    local path = os.tmpname()
    os.remove(path)
    path = path .. ".db"
    created[#created + 1] = path
    return path
end

function helpers.remove_db(path)
    for _, suffix in ipairs({ "", "-wal", "-shm", "-journal" }) do
        os.remove(path .. suffix)
    end
end

function helpers.cleanup()
    for i = #created, 1, -1 do
        helpers.remove_db(created[i])
        created[i] = nil
    end
end

local function shell_quote(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
helpers.shell_quote = shell_quote

--- A `lua -e` chunk that makes a child's require "cmpxchg.core" load the core
-- under test (the first entry of helpers.cpath), whatever package.cpath the
-- child's own script sets up: the examples prefer ./?.so, the Lua 5.4 build.
helpers.preload_core = ("package.preload['cmpxchg.core'] = assert(package.loadlib(%q, "
    .. "'luaopen_cmpxchg_core'))"):format((helpers.cpath:match("[^;]+"):gsub("%?", "cmpxchg/core")))

--- The command line that runs Lua `code` (or a file with args) in a child
-- interpreter that finds this checkout's modules.
function helpers.lua_command(script, args)
    local setup = ("package.path='./lua/?.lua;./lua/?/init.lua;./spec/?.lua;'..package.path;"
        .. "package.cpath='%s;'..package.cpath"):format(helpers.cpath)
    local parts = { helpers.lua, "-e", shell_quote(setup), shell_quote(script) }
    for _, a in ipairs(args or {}) do parts[#parts + 1] = shell_quote(a) end
    return table.concat(parts, " ")
end

-- Lua 5.1 and LuaJIT return only `true` from a popen handle's close (and a raw
-- wait status from os.execute); 5.2+ return `ok, "exit"|"signal", code`.
local native_status = _VERSION ~= "Lua 5.1"
local status_files = setmetatable({}, { __mode = "k" })

--- io.popen(cmd, mode) whose handle helpers.pclose() can tell how it ended, on
-- every Lua: where close() cannot, the shell writes the status to a file.
function helpers.popen(cmd, mode)
    if native_status then return io.popen(cmd, mode) end
    local status = os.tmpname()
    local p, err = io.popen(("( %s\n); echo $? > %s"):format(cmd, shell_quote(status)), mode)
    if p then status_files[p] = status end
    return p, err
end

--- Closes a helpers.popen handle: `ok, "exit"|"signal", code`, as 5.2+ close() does
-- (through the status file, a child killed by signal N shows as exit 128 + N,
-- which is reported as "signal", N).
function helpers.pclose(p)
    local status = status_files[p]
    if not status then return p:close() end
    status_files[p] = nil
    p:close()
    local f = io.open(status, "r")
    local code = f and tonumber(f:read("*a"))
    if f then f:close() end
    os.remove(status)
    if not code then return nil, "exit", -1 end
    if code > 128 then return nil, "signal", code - 128 end
    return code == 0 or nil, "exit", code
end

--- Runs a shell command to completion; its output, or raises. Without the
-- ASan run's preload: servers, node and scripts are not what that run checks.
function helpers.sh(cmd)
    local p = assert(helpers.popen("env -u LD_PRELOAD " .. cmd .. " 2>&1"))
    local out = p:read("*a")
    local ok = helpers.pclose(p)
    if not ok then error(("command failed: %s\n%s"):format(cmd, out), 2) end
    return (out:gsub("%s+$", ""))
end

--- Runs a Lua file to completion: output, exit code.
function helpers.run(script, args)
    local p = assert(helpers.popen(helpers.lua_command(script, args) .. " 2>&1", "r"))
    local out = p:read("*a")
    local _, _, code = helpers.pclose(p)
    return out, code
end

--- Starts a Lua file in the background: a handle whose lines can be read;
-- close() waits for it.
function helpers.start(script, args)
    return assert(helpers.popen(helpers.lua_command(script, args) .. " 2>&1", "r"))
end

function helpers.kill(pid, signal)
    return os.execute(("kill -%s %d 2>/dev/null"):format(signal or "KILL", pid))
end

--- Polls `fn` until it returns a true value or `timeout` seconds pass.
function helpers.wait_until(fn, timeout, what)
    local core = require "cmpxchg.core"
    local deadline = core.monotime() + (timeout or 10)
    repeat
        local v = fn()
        if v then return v end
        core.sleep(0.005)
    until core.monotime() > deadline
    error("timed out waiting for " .. (what or "a condition"), 2)
end

--- Opens a test target: a path, or "URL#database" for a server backend
-- (so that child processes get both from one argument).
function helpers.open_target(target, opts)
    local cmpxchg = require "cmpxchg"
    local url, database = target:match("^(%a+://.-)#(.+)$")
    if url then
        opts = opts or {}
        opts.database = database
        return cmpxchg.open(url, opts)
    end
    return cmpxchg.open(target, opts)
end

--- A process's state letter from /proc ("R", "S", "T" when stopped, "Z"),
-- or nil when it is gone.
function helpers.proc_state(pid)
    local f = io.open("/proc/" .. pid .. "/stat", "r")
    if not f then return nil end
    local stat = f:read("*a")         -- nil: it was gone by the time of the read
    f:close()
    return stat and stat:match("%) (%a)")
end

function helpers.file_exists(path)
    local f = io.open(path, "r")
    if f then f:close() return true end
    return false
end

return helpers
