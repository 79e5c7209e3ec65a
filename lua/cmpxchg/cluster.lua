--- What the two server backends (ravendb.lua, etcd.lua) share: one kept-alive
-- transport connection per node URL, the failover loop, and the `tls` open
-- option. What each node's answer means stays in each backend.
local check = require "cmpxchg.check"
local observe = require "cmpxchg.observe"

local cluster = {}

--- Items one list() call reads at most, those its `start` skips included: a
-- server whose pages never end cannot grow a list without bound.
cluster.MAX_LIST_ITEMS = 100000

function cluster.too_many(prefix)
    return check.fail("http", "listing '%s' reads more than %d items: list a narrower prefix",
        prefix, cluster.MAX_LIST_ITEMS)
end

--- Whether `t` (a decoded JSON value) is an array: a table whose keys are
-- 1..n (an empty object reads as an empty array).
function cluster.is_array(t)
    if type(t) ~= "table" then return false end
    local n = 0
    for _ in pairs(t) do n = n + 1 end
    return n == #t
end

--- A node URL that a server handed out (a topology): "scheme://host[:port]"
-- and nothing more (no user info, path, query, space or control character),
-- without trailing slashes; nil when it is anything else.
function cluster.node_url(url)
    if type(url) ~= "string" or #url > 300 or url:find("[^\33-\126]") then return nil end
    local authority = url:match("^[Hh][Tt][Tt][Pp][Ss]?://([^/?#@]+)/*$")
    if not authority then return nil end
    local port = authority:match("^%[[%x:%.]+%]:?(%d*)$") or authority:match("^[%w%.%-_]+:?(%d*)$")
    if not port or (port ~= "" and (#port > 5 or tonumber(port) < 1 or tonumber(port) > 65535)) then
        return nil
    end
    return (url:gsub("/+$", ""))
end

--- The backend's connection to `url`, made on first use with the backend's
-- transport factory (self.transports) and options (self.transport_opts).
function cluster.connection(self, url)
    local c = self.connections[url]
    if c == nil then
        c = self.transports.new(self.transport_opts)
        self.connections[url] = c
    end
    return c
end

--- The positions 1..n in the order requests try them: from `first` (the
-- preferred node) on, wrapping around.
function cluster.from(first, n)
    local order = {}
    for k = 0, n - 1 do order[k + 1] = (first - 1 + k) % n + 1 end
    return order
end

local unpack = table.unpack or unpack     -- luacheck: ignore 143

local function pack(...)
    return { n = select("#", ...), ... }
end

--[[ cluster.try_in_turn(order, attempt) -> the failover loop of both
backends. attempt(i, k) tries node position i (the k-th attempt) and says
what its answer means, first a verdict, then results:
  "answer", ...      the node answered: returned as they are
  "final", ...       what every node would say, or no time left: returned
  "again"            the same node once more, not counted (a new login)
  "next", err, code  this node failed: the next one in `order`
Each node of `order` is tried once in turn, a single node twice (a dropped
connection is worth one more try), or `attempts` times in all, going round
`order`. When every attempt said "next": nil, the last err and code, and the
number of attempts made. ]]
function cluster.try_in_turn(order, attempt, attempts)
    local n = #order
    attempts = attempts or (n == 1 and 2 or n)
    local k, again = 1, false
    local err, code
    while k <= attempts do
        local r = pack(attempt(order[(k - 1) % n + 1], k))
        local verdict = r[1]
        if verdict == "answer" or verdict == "final" then
            return unpack(r, 2, r.n)
        elseif verdict == "again" and not again then
            again = true
        else
            err, code = r[2], r[3]
            if observe.active and k < attempts and n > 1 then
                observe.emit("failover", { from = order[(k - 1) % n + 1],
                    to = order[k % n + 1], attempt = k, err = err, code = code })
            end
            k = k + 1
        end
    end
    return nil, err, code, attempts
end

--- Checks the `tls` option of cmpxchg.open (a server backend's).
function cluster.check_tls(tls)
    if tls == nil then return end
    for k, v in pairs(tls) do
        if k == "verify" then
            if type(v) ~= "boolean" then
                check.argerror(2, "open", "tls.verify must be a boolean")
            end
        elseif k == "ca" or k == "cert" or k == "key" then
            if type(v) ~= "string" then
                check.argerror(2, "open", "tls." .. k .. " must be a path")
            end
        else
            check.argerror(2, "open", "unknown tls option '" .. tostring(k) .. "'")
        end
    end
end

--- Closes every connection of the backend; returns true.
function cluster.close(self)
    for url, c in pairs(self.connections) do
        self.connections[url] = nil
        c:close()
    end
    return true
end

return cluster
