--- What a store target names, for cmpxchg.open and bin/cmpxchg: a server (a
-- URL), a private in-memory store, or a file; and the default file, whose
-- directories are made and checked here however its path reaches open.
local check = require "cmpxchg.check"
local core = require "cmpxchg.core"

local target = {}

local function absolute(dir)
    if dir == nil or dir:sub(1, 1) ~= "/" then return nil end
    dir = dir:gsub("/+$", "")
    return dir == "" and "/" or dir
end

--- The default store file and the directory above which its place is not
-- ours to check (HOME, or XDG_STATE_HOME when that is outside HOME); nil
-- when neither variable gives an absolute path (XDG says to ignore a
-- relative XDG_STATE_HOME).
local function default_location()
    local home = absolute(os.getenv("HOME"))
    local state = absolute(os.getenv("XDG_STATE_HOME"))
    if state then
        local under_home = home and (home == "/" or state:sub(1, #home + 1) == home .. "/")
        return (state == "/" and "" or state) .. "/cmpxchg/default.db",
            under_home and home or state
    elseif home then
        return (home == "/" and "" or home) .. "/.local/state/cmpxchg/default.db", home
    end
    return nil
end

function target.default_path()
    return (default_location())
end

--- "server" (an http(s):// or etcd(s):// URL, or a table of them), "memory"
-- (":memory:") or "file" (any other string). A string that looks like a
-- server address without its scheme (host:port, before any "/") raises: it
-- would otherwise quietly become a local file, and locks taken there would
-- exclude only this machine's processes.
function target.kind(t)
    if type(t) == "table" or (type(t) == "string" and t:find("^%a[%w+.-]*://")) then
        return "server"
    end
    check.type(t, "string", 1, "open")
    if t == "" then check.argerror(1, "open", "empty target") end
    if t == ":memory:" then return "memory" end
    local first = t:match("^[^/]*")
    if first:find(":%d+$") then
        check.argerror(1, "open", ("'%s' looks like a server address without a scheme: "
            .. "write http://%s (or https://) for RavenDB, etcd://%s for etcd; "
            .. "a file of that name is ./%s"):format(t, t, t, t))
    end
    return "file"
end

--- Before a file store is opened: the default file's place is refused, as
-- ssh refuses ~/.ssh, when another user could replace the store; with
-- `create`, its missing directories are made first (mode 0700). true, or
-- nil, err, "connect".
function target.prepare(path, create)
    local default, top = default_location()
    if path ~= default then return true end
    local ok, why = core.state_file(path, top, create)
    if ok then return true end
    if why:find("^cannot create") then return nil, "connect: " .. why, "connect" end
    return nil, ("connect: refusing the default store %s: %s (another user could "
        .. "replace the store: fix that, or give a store with CMPXCHG_URL)"):format(path, why),
        "connect"
end

--- After a file store failed to open: the error, with what is wrong with the
-- file's directory when something is (SQLite says only "unable to open").
function target.explain(path, err, code)
    local problem = code == "connect" and core.dir_problem(path)
    if problem then
        return ("connect: cannot open %s: %s"):format(path, problem)
    end
    return err
end

return target
