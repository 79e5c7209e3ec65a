--- Counts what a process sends to its store's server, for the processes that
-- measure what a wait costs (spec/support/etcd_watch_waiter.lua,
-- bench/lock_worker.lua): cmpxchg.transport.curl is wrapped so that each
-- HTTP request counts one, and an etcd watch stream one however long it
-- stays open.
--   require("spec.support.counting_transport").install(function(what) ... end)
-- `count(what)` runs before each is sent, `what` being "request" or "stream".
-- Install it before the store is opened.
local counting = {}

function counting.install(count)
    local curl = require "cmpxchg.transport.curl"
    local http_new = curl.new
    curl.new = function(opts)
        local h = http_new(opts)
        return {
            request = function(_, ...)
                count("request")
                return h:request(...)
            end,
            stream = function(_, ...)
                count("stream")
                return h:stream(...)
            end,
            close = function() return h:close() end,
        }
    end
end

return counting
