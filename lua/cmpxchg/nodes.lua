--- What the two server backends (ravendb.lua, etcd.lua) share: one kept-alive
-- transport connection per node URL, and the shape of their errors.
local nodes = {}

--- `s` with its control characters written as \ddd: a server's bytes must
-- not reach a log or a terminal as they are (a line break, an escape).
function nodes.printable(s)
    return (tostring(s):gsub("[%z\1-\31\127]", function(c) return ("\\%d"):format(c:byte()) end))
end

--- At most 200 bytes of a reply, for messages, printable.
function nodes.snippet(s)
    s = tostring(s)
    return nodes.printable(#s > 200 and s:sub(1, 200) .. "..." or s)
end

--- nil, "<code>: <message>", "<code>": the error contract.
function nodes.fail(code, fmt, ...)
    return nil, code .. ": " .. fmt:format(...), code
end

--- Items one list() call reads at most, those its `start` skips included: a
-- server whose pages never end cannot grow a list without bound.
nodes.MAX_LIST_ITEMS = 100000

function nodes.too_many(prefix)
    return nodes.fail("http", "listing '%s' reads more than %d items: list a narrower prefix",
        prefix, nodes.MAX_LIST_ITEMS)
end

--- Whether `t` (a decoded JSON value) is an array: a table whose keys are
-- 1..n (an empty object reads as an empty array).
function nodes.is_array(t)
    if type(t) ~= "table" then return false end
    local n = 0
    for _ in pairs(t) do n = n + 1 end
    return n == #t
end

--- A node URL that a server handed out (a topology): "scheme://host[:port]"
-- and nothing more (no user info, path, query, space or control character),
-- without trailing slashes; nil when it is anything else.
function nodes.node_url(url)
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
function nodes.connection(self, url)
    local c = self.connections[url]
    if c == nil then
        c = self.transports.new(self.transport_opts)
        self.connections[url] = c
    end
    return c
end

--- The URLs of `list` in the order requests try them: from position `first`
-- (the preferred node) on, wrapping around; `url_of(item)` gives an item's URL.
function nodes.in_turn(list, first, url_of)
    local out = {}
    for i = 0, #list - 1 do
        local item = list[(first + i - 1) % #list + 1]
        out[#out + 1] = url_of and url_of(item) or item
    end
    return out
end

--- Closes every connection of the backend; returns true.
function nodes.close(self)
    for url, c in pairs(self.connections) do
        self.connections[url] = nil
        c:close()
    end
    return true
end

return nodes
