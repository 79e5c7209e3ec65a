--- The plain-Lua HTTP transport: libcurl through the C core (csrc/http.c).
-- new(opts) -> an object with
--   request(method, url, body, headers, timeout) -> status, body, headers
--                                                 | nil, err, code
--   close()
-- opts: connect_timeout (seconds), tls = {ca =, cert =, key =, verify =},
-- reply_headers: the lower-case names of the only reply headers to report
-- (all when left out; a transport may report more than asked).
-- It blocks the calling thread: inside nginx, transport/ngx.lua is used.
local core = require "cmpxchg.core"

local curl = {}

function curl.new(opts)
    return core.http_new(opts)
end

return curl
