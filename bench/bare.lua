--- The Lua floor: bench/floor.c's requests written in plain Lua over the
-- library's own C transport (core.http_new), with nothing else: no argument
-- checks, no failover, no JSON decoding (replies are searched, as floor.c
-- does). Between floor.c and the library, it shows what running in Lua at all
-- costs, apart from what the library does.
--   bare.ops(target, database) -> {put0 =, putcas =, get =, delete =}, each
--   function(key, indexes, i) -> ok, as bench/ops.lua's
local core = require "cmpxchg.core"

local bare = {}

local VALUE = '{"n":42,"s":"bench value","ok":true}'
local b64, uuid = core.b64encode, core.uuid

--- The integer after `"name":` (quoted or not) in a reply.
local function int_after(body, name)
    return tonumber(body:match('"' .. name .. '":"?(%d+)'))
end

-- reply headers are not even looked at: none is made into Lua strings
local function connect() return core.http_new({ reply_headers = {} }) end

local function ravendb(url, database)
    local http = connect()
    local base = ("%s/databases/%s/cmpxchg?key="):format(url, database)
    local body = '{"Object":' .. VALUE .. "}"
    local read = { ["Topology-Etag"] = '"0"' }
    local write = { ["Topology-Etag"] = '"0"', ["Content-Type"] = "application/json" }
    local function put(key, index)
        local status, reply = http:request("PUT", ("%s%s&index=%d&raft-request-id=%s")
            :format(base, key, index, uuid()), body, write, 15)
        if status == 200 and reply:find('"Successful":true', 1, true) then
            return true, int_after(reply, "Index")
        end
    end
    return {
        put0 = function(key, indexes, i)
            local ok, index = put(key, 0)
            indexes[i] = index
            return ok
        end,
        putcas = function(key, indexes, i)
            local ok, index = put(key, indexes[i])
            indexes[i] = index
            return ok
        end,
        get = function(key)
            local status, reply = http:request("GET", base .. key, nil, read, 15)
            return status == 200 and (int_after(reply, "Index") or 0) > 0
        end,
        delete = function(key, indexes, i)
            local status, reply = http:request("DELETE", ("%s%s&index=%d&raft-request-id=%s")
                :format(base, key, indexes[i], uuid()), nil, read, 15)
            return status == 200 and reply:find('"Successful":true', 1, true) ~= nil
        end,
    }
end

local function etcd(url, database)
    local http = connect()
    local headers = { ["Content-Type"] = "application/json",
                      ["Grpc-Metadata-hasleader"] = "true", ["Grpc-Timeout"] = "4700m" }
    local txn_url, range_url = url .. "/v3/kv/txn", url .. "/v3/kv/range"
    local prefix = database and database .. "/" or ""
    local function txn(k64, compare, success)
        local status, reply = http:request("POST", txn_url, ('{"compare":[{"key":"%s",%s}],'
            .. '"success":[%s],"failure":[{"request_range":{"key":"%s"}}]}')
            :format(k64, compare, success, k64), headers, 5)
        if status == 200 and reply:find('"succeeded":true', 1, true) then
            return true, int_after(reply, "revision")
        end
    end
    local function put(key, indexes, i, compare)
        local k64 = b64(prefix .. key)
        local value = ('{"Key":"%s","Write":"%s","Object":%s}'):format(key, uuid(), VALUE)
        local ok, index = txn(k64, compare, ('{"request_put":{"key":"%s","value":"%s"}}')
            :format(k64, b64(value)))
        indexes[i] = index
        return ok
    end
    return {
        put0 = function(key, indexes, i)
            return put(key, indexes, i,
                '"target":"CREATE","result":"EQUAL","create_revision":"0"')
        end,
        putcas = function(key, indexes, i)
            return put(key, indexes, i, ('"target":"MOD","result":"EQUAL","mod_revision":"%d"')
                :format(indexes[i]))
        end,
        get = function(key)
            local status, reply = http:request("POST", range_url,
                ('{"key":"%s"}'):format(b64(prefix .. key)), headers, 5)
            return status == 200 and reply:find('"kvs"', 1, true) ~= nil
        end,
        delete = function(key, indexes, i)
            local k64 = b64(prefix .. key)
            return (txn(k64, ('"target":"MOD","result":"EQUAL","mod_revision":"%d"')
                :format(indexes[i]), ('{"request_delete_range":{"key":"%s","prev_kv":true}}')
                :format(k64)))
        end,
    }
end

function bare.ops(target, database)
    local etcd_url = target:match("^etcd(s?://.*)$")
    if etcd_url then return etcd("http" .. etcd_url, database) end
    assert(target:match("^https?://"), "the Lua floor speaks to RavenDB or etcd only")
    return ravendb(target, database)
end

return bare
