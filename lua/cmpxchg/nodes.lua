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

--- Closes every connection of the backend; returns true.
function nodes.close(self)
    for url, c in pairs(self.connections) do
        self.connections[url] = nil
        c:close()
    end
    return true
end

return nodes
