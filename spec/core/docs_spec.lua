-- The README is the reference (resty style): every public function has a
-- `**syntax:**` line there, as luv's docscov checks its bindings. A method
-- added to the store, the lock, the monitor, a semaphore, an election, a
-- leader job or the module without one fails here.
local cmpxchg = require "cmpxchg"
local lock = require "cmpxchg.lock"
local store = require "cmpxchg.store"

local function readme_syntax()
    local f = assert(io.open("README.md"))
    local text = f:read("*a")
    f:close()
    local lines = {}
    for line in text:gmatch("[^\n]+") do
        local syntax = line:match("^%*%*syntax:%*%* `(.-)`$")
        if syntax then lines[#lines + 1] = syntax end
    end
    return lines
end

--- The public names: module functions, and the methods of each object,
-- written as a caller writes them (cmpxchg.open, store:put, lock:release).
local function public_names()
    local names = {}
    for name, v in pairs(cmpxchg) do
        if type(v) == "function" then names[#names + 1] = "cmpxchg." .. name end
    end
    local st = assert(cmpxchg.open(":memory:"))
    local objects = {
        store = store.metatable.__index,
        lock = lock.metatable.__index,
        monitor = getmetatable(cmpxchg.monitor(st)).__index,
        semaphore = getmetatable(st:semaphore("s", 1)).__index,
        election = getmetatable(st:election("e")).__index,
        job = require("cmpxchg.leader_job").metatable.__index,
    }
    for object, methods in pairs(objects) do
        for name, v in pairs(methods) do
            if type(v) == "function" then names[#names + 1] = object .. ":" .. name end
        end
    end
    table.sort(names)
    return names
end

describe("the README reference", function()
    it("has a syntax line for every public function", function()
        local syntax = readme_syntax()
        local missing = {}
        for _, name in ipairs(public_names()) do
            local found = false
            for _, line in ipairs(syntax) do
                if line:find(name .. "(", 1, true) then found = true end
            end
            if not found then missing[#missing + 1] = name end
        end
        assert.same({}, missing)
    end)

    it("holds no merge conflict left behind, nor do the other READMEs", function()
        for _, path in ipairs({ "README.md", "spec/README.md", "bench/README.md", "doc/README.md" }) do
            local n = 0
            for line in io.lines(path) do
                n = n + 1
                assert.is_nil(line:match("^<<<<<<< ") or line:match("^>>>>>>> ")
                    or line:match("^=======$"), ("%s:%d: %s"):format(path, n, line))
            end
        end
    end)

    it("documents nothing that does not exist", function()
        local known = {}
        for _, name in ipairs(public_names()) do known[name] = true end
        local stale = {}
        for _, line in ipairs(readme_syntax()) do
            local name = line:match("= ([%w_]+[.:][%w_]+)%(") or line:match("^([%w_]+[.:][%w_]+)%(")
            if name and not known[name] then stale[#stale + 1] = name end
        end
        assert.same({}, stale)
    end)
end)
