--- What the two server backends (ravendb.lua, etcd.lua) share: one kept-alive
-- transport connection per node URL, and the shape of their errors.
local nodes = {}

--- At most 200 bytes of a reply, for messages.
function nodes.snippet(s)
    s = tostring(s)
    return #s > 200 and s:sub(1, 200) .. "..." or s
end

--- nil, "<code>: <message>", "<code>": the error contract.
function nodes.fail(code, fmt, ...)
    return nil, code .. ": " .. fmt:format(...), code
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

--- Checks the `tls` option of cmpxchg.open (a server backend's).
function nodes.check_tls(tls)
    if tls == nil then return end
    local argerror = require("cmpxchg.check").argerror
    for k, v in pairs(tls) do
        if k == "verify" then
            if type(v) ~= "boolean" then argerror(2, "open", "tls.verify must be a boolean") end
        elseif k == "ca" or k == "cert" or k == "key" then
            if type(v) ~= "string" then argerror(2, "open", "tls." .. k .. " must be a path") end
        else
            argerror(2, "open", "unknown tls option '" .. tostring(k) .. "'")
        end
    end
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
