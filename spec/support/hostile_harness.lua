--- Starts spec/support/hostile_server.js for the hostile-server specs, with
-- the test certificates its TLS listeners need, and reads its request counts.
local cjson = require "cjson"
local core = require "cmpxchg.core"
local helpers = require "spec.helpers"

local harness = {}

--- Starts the server (and makes certificates under a fresh directory):
-- {ports = {case = port}, certs = dir, hits = fn() -> {case = n}, stop = fn}.
-- Raises when node or openssl is missing: these specs never skip.
function harness.start()
    local certs = os.tmpname()
    os.remove(certs)
    helpers.sh("scripts/make-test-certs " .. helpers.shell_quote(certs))
    local p = assert(io.popen("exec env -u LD_PRELOAD node spec/support/hostile_server.js "
        .. helpers.shell_quote(certs), "r"))
    local line = p:read("*l")
    assert(line, "the hostile server did not start (is node installed?)")
    local info = cjson.decode(line)
    local control = core.http_new()
    local server = { ports = info.ports, certs = certs, pid = math.floor(info.pid) }
    function server.hits()
        local status, body = control:request("GET", ("http://127.0.0.1:%d/hits")
            :format(info.control), nil, nil, 10)
        assert(status == 200, body)
        return cjson.decode(body)
    end
    function server.stop()
        os.execute("kill " .. server.pid)
        p:close()
        control:close()
        os.execute("rm -rf " .. helpers.shell_quote(certs))
    end
    return server
end

return harness
