--- A scripted transport for exact protocol tests: each request is recorded
-- and answered by the next scripted reply, checked in order.
--   local t = Scripted.new()
--   t:reply(200, '{"Index":1}', {["refresh-topology"] = "true"})
--   t:fail("connect: refused", "connect", true)   -- true: unsent (never reached the server)
--   t:fail("timeout: ...", "timeout", 2.5)         -- a number: took so many seconds
--   t:respond(function(request) return 200, body end)  -- an answer made from the request
--   ... t.requests[i] = {method =, url =, body =, headers =, timeout =, node =}
-- With a fake clock (helpers.fake_clock), Scripted.new(clock), a reply or
-- failure given `took` seconds moves the clock on by that much.
local Scripted = {}
Scripted.__index = Scripted

function Scripted.new(clock)
    local self = setmetatable({ script = {}, requests = {}, opened = 0, closed = 0,
                                clock = clock }, Scripted)
    -- the factory interface ravendb.lua expects: new(opts) -> connection
    self.factory = {
        new = function(opts)
            self.opened = self.opened + 1
            self.last_opts = opts
            return {
                request = function(_, method, url, body, headers, timeout)
                    return self:answer(method, url, body, headers, timeout)
                end,
                close = function() self.closed = self.closed + 1 end,
            }
        end,
    }
    return self
end

function Scripted:reply(status, body, headers, took)
    self.script[#self.script + 1] = { status, body or "", headers or {}, took = took }
    return self
end

--- A failed request: err, code, and either unsent (true: it never reached
-- the server) or took (seconds the fake clock moves on by).
function Scripted:fail(err, code, unsent_or_took)
    local took = type(unsent_or_took) == "number" and unsent_or_took or nil
    local unsent = type(unsent_or_took) == "boolean" and unsent_or_took or nil
    self.script[#self.script + 1] = { nil, err, code, unsent, took = took }
    return self
end

function Scripted:respond(fn)
    self.script[#self.script + 1] = { fn = fn }
    return self
end

--- Scripts the topology answer of a cluster of `urls` (`roles`: their
-- ServerRole by position, "Member" when left out).
function Scripted:topology(urls, etag, roles)
    local nodes = {}
    for i, url in ipairs(urls) do
        nodes[i] = ('{"Url":"%s","ClusterTag":"%s","ServerRole":"%s","Database":"db"}')
            :format(url, string.char(64 + i), roles and roles[i] or "Member")
    end
    return self:reply(200, ('{"Nodes":[%s],"Etag":%d}'):format(table.concat(nodes, ","),
        etag or 1))
end

function Scripted:answer(method, url, body, headers, timeout)
    self.requests[#self.requests + 1] = { method = method, url = url, body = body,
        headers = headers, timeout = timeout }
    local next_reply = table.remove(self.script, 1)
    assert(next_reply, "unscripted request: " .. method .. " " .. url)
    if next_reply.took then self.clock.now = self.clock.now + next_reply.took end
    if next_reply.fn then return next_reply.fn(self.requests[#self.requests]) end
    return next_reply[1], next_reply[2], next_reply[3], next_reply[4]
end

function Scripted:last()
    return self.requests[#self.requests]
end

return Scripted
