--- Test harness for the RavenDB backend: the emulator (started by
-- scripts/ravendb-emulator, driven through its control API), or a real
-- server when RAVENDB_URL is set; a fresh database per test.
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"

local harness = {}

local sh = require("spec.helpers").sh
harness.sh = sh

local function split(list)
    local out = {}
    for url in list:gmatch("[^,%s]+") do out[#out + 1] = url end
    return out
end

--- A server to test against: {urls =, control = URL or nil, real = bool,
-- tls = {ca =, cert =, key =} or nil}. `variant` "tls" starts a second
-- emulator serving HTTPS that requires a client certificate.
function harness.server(variant)
    local real = os.getenv("RAVENDB_URL")
    if real and real ~= "" and variant ~= "tls" then
        return { urls = split(real), real = true, database = os.getenv("RAVENDB_DATABASE") }
    end
    local dir = (os.getenv("RAVENDB_EMULATOR_DIR") or "/tmp/cmpxchg-ravendb-emulator")
        .. (variant == "tls" and "-tls" or "")
    local env = "RAVENDB_EMULATOR_DIR=" .. dir .. " "
    sh(env .. "scripts/ravendb-emulator start" .. (variant == "tls" and " --tls" or ""))
    local server = {
        urls = split(sh(env .. "scripts/ravendb-emulator urls")),
        control = sh(env .. "scripts/ravendb-emulator control-url"),
        dir = dir,
    }
    if variant == "tls" then
        server.certs = dir .. "/certs"
    end
    return server
end

local control_http

--- Sends a control request to the emulator: method, path, body table.
function harness.control(server, method, path, body)
    assert(server.control, "this test needs the emulator's control API")
    control_http = control_http or core.http_new()
    local status, reply = control_http:request(method, server.control .. path,
        body and json.encode(body) or nil, { ["Content-Type"] = "application/json" }, 10)
    assert(status == 200, ("control %s %s: %s %s"):format(method, path, tostring(status),
        tostring(reply)))
    return json.decode(reply)
end

local counter = 0

-- one admin connection per server (and its TLS settings)
local function admin(server, tls)
    server.admin_http = server.admin_http or core.http_new({ tls = tls })
    return server.admin_http
end

--- Empties a scratch database through the library itself.
local function purge(server, name)
    local cmpxchg = require "cmpxchg"
    local st = assert(cmpxchg.open(server.urls, { database = name }))
    for _, item in ipairs(assert(st:list(""))) do
        assert(st:delete(item.key, item.index) ~= nil)
    end
    st:close()
end

--- Creates a fresh database and returns its name. On a real server with
-- RAVENDB_DATABASE set, that database is emptied and used instead (for
-- users who may not create databases): it must be a scratch database.
function harness.create_database(server, tls)
    if server.database and server.database ~= "" then
        purge(server, server.database)
        return server.database
    end
    counter = counter + 1
    local name = ("cmpxchg_test_%d_%d_%d"):format(core.pid(), counter, math.random(1e6))
    -- on every node given, so that failover has somewhere to go (a real server puts a
    -- database on replicationFactor nodes only)
    local status, reply = admin(server, tls):request("PUT",
        ("%s/admin/databases?name=%s&replicationFactor=%d"):format(server.urls[1], name,
            #server.urls),
        json.encode({ DatabaseName = name, Settings = {},
                      Disabled = false, Encrypted = false,
                      Topology = { DynamicNodesDistribution = false } }),
        { ["Content-Type"] = "application/json" }, 30)
    assert(status == 200 or status == 201, ("create database %s: %s %s"):format(name,
        tostring(status), tostring(reply)))
    return name
end

function harness.delete_database(server, name)
    if name == server.database then return purge(server, name) end
    admin(server):request("DELETE", server.urls[1] .. "/admin/databases",
        json.encode({ DatabaseNames = { name }, HardDelete = true }),
        { ["Content-Type"] = "application/json" }, 30)
end

return harness
