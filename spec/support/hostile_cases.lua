--- The cases of the hostile-server suite: which misbehaving listener of
-- spec/support/hostile_server.js a store is opened on, which call is made
-- (spec/support/hostile_run.lua's OPS), and what it must give back. The same
-- list runs through libcurl (spec/integration/hostile_spec.lua) and through
-- cosockets in nginx (spec/integration/nginx_hostile_spec.lua).
--
-- Fields: server (the listener), backend ("ravendb" or "etcd"), op (nil:
-- only open), code (the error code the call must return, or "ok"; a table
-- {curl =, ngx =} where the transports differ, or a set {a = true, b = true}
-- where either is right), timeout (the store's option, default 1), and the
-- bounds: seconds (for open and the call together, default 20), mb (growth
-- of the process's peak resident size, default 100) and kept (growth still
-- there after the call, the store open; libcurl only: LuaJIT keeps freed
-- memory for reuse). Bounds are generous: they
-- prove "bounded", they are not speed targets. `trap`: the case must not
-- make any request to the trap listener (redirects, foreign topologies).
-- replies past the 256 MB cap; `kept`: the store must not keep the memory
-- of such a reply once the call is over (its libcurl handle's buffer)
local BIG = { timeout = 60, seconds = 240, mb = 900, kept = 64 }

local function big(case)
    for k, v in pairs(BIG) do if case[k] == nil then case[k] = v end end
    return case
end

local cases = {
    -- sizes: the reply caps (256 MB of body, 64 KB of headers) apply while reading
    big { server = "huge_length", backend = "ravendb", op = "get", code = "http" },
    big { server = "huge_length", backend = "etcd", op = "get", code = "http" },
    big { server = "huge_chunked", backend = "ravendb", op = "list", code = "http" },
    big { server = "huge_close", backend = "ravendb", op = "get", code = "http" },
    big { server = "huge_close", backend = "etcd", op = "get", code = "http" },
    -- libcurl inflates up to the cap; cosockets ask for no encoding and read the bytes as JSON
    big { server = "gzip_bomb", backend = "ravendb", op = "get", code = { curl = "http", ngx = "decode" } },
    { server = "tiny_chunks", backend = "ravendb", op = "get", timeout = 2, mb = 300,
      code = { timeout = true, http = true } },
    { server = "header_line", backend = "ravendb", code = "http" },
    { server = "header_flood", backend = "etcd", code = "http" },
    { server = "interim_flood", backend = "ravendb", code = "http" },
    { server = "chunk_line", backend = "ravendb", op = "get", code = "connect" },
    { server = "huge_chunk_size", backend = "ravendb", op = "get",
      code = { curl = "timeout", ngx = "http" } },

    -- time: `timeout` bounds each exchange whatever the server does
    { server = "stall", backend = "ravendb", code = "timeout" },
    { server = "stall", backend = "etcd", code = "timeout" },
    { server = "trickle_headers", backend = "ravendb", code = "timeout" },
    { server = "trickle_headers", backend = "etcd", code = "timeout" },
    { server = "trickle_body", backend = "ravendb", op = "get", code = "timeout" },
    { server = "trickle_body", backend = "etcd", op = "get", code = "timeout" },
    { server = "trickle_chunked", backend = "ravendb", op = "list", code = "timeout" },
    { server = "trickle_chunked", backend = "etcd", op = "put", code = "timeout" },
    -- a 16 MB value is copied a few times on its way out (more resident under
    -- ASan, whose quarantine holds freed memory)
    { server = "slow_reader", backend = "ravendb", op = "put_big", code = "timeout", mb = 600 },
    { server = "slow_reader", backend = "etcd", op = "put_big", code = "timeout", mb = 600 },

    -- broken replies
    { server = "truncated_length", backend = "ravendb", op = "get", code = "connect" },
    { server = "truncated_length", backend = "etcd", op = "get", code = "connect" },
    { server = "truncated_chunked", backend = "ravendb", op = "get", code = "connect" },
    { server = "garbage", backend = "ravendb", op = "get", code = "connect" },
    { server = "bad_length", backend = "etcd", op = "get", code = "connect" },
    { server = "malformed_json", backend = "ravendb", op = "get", code = "decode" },
    { server = "malformed_json", backend = "etcd", op = "put", code = "decode" },
    { server = "redirect", backend = "ravendb", op = "get", code = "http", trap = true },
    { server = "redirect", backend = "etcd", op = "put", code = "http", trap = true },

    -- RavenDB's shapes and indexes
    { server = "rdb_results_object", backend = "ravendb", op = "get", code = "decode" },
    { server = "rdb_results_object", backend = "ravendb", op = "get_many", code = "decode" },
    { server = "rdb_results_object", backend = "ravendb", op = "list", code = "decode" },
    { server = "rdb_index_float", backend = "ravendb", op = "get", code = "decode" },
    { server = "rdb_index_float", backend = "ravendb", op = "list", code = "decode" },
    { server = "rdb_index_string", backend = "ravendb", op = "get", code = "decode" },
    { server = "rdb_index_huge", backend = "ravendb", op = "get", code = "decode" },
    { server = "rdb_index_negative", backend = "ravendb", op = "get", code = "decode" },
    { server = "rdb_index_negative", backend = "ravendb", op = "list", code = "decode" },
    { server = "rdb_write_zero", backend = "ravendb", op = "put", code = "decode" },
    { server = "rdb_write_zero", backend = "ravendb", op = "lock", code = "decode" },
    { server = "rdb_write_negative", backend = "ravendb", op = "put", code = "decode" },
    { server = "rdb_write_string", backend = "ravendb", op = "delete", code = "decode" },
    -- paging that makes no progress, or never ends
    { server = "rdb_list_stuck", backend = "ravendb", op = "list", code = "decode" },
    { server = "rdb_list_stuck", backend = "ravendb", op = "list_all", code = "decode" },
    { server = "rdb_list_oversize", backend = "ravendb", op = "list", code = "decode" },
    { server = "rdb_list_endless", backend = "ravendb", op = "list", code = "http", timeout = 10,
      seconds = 120, mb = 400 },
    -- foreign topologies
    { server = "rdb_topology_http", backend = "ravendb", tls = true, code = "decode", trap = true },
    { server = "rdb_topology_mixed", backend = "ravendb", tls = true, op = "get", code = "ok",
      trap = true },
    { server = "rdb_topology_crlf", backend = "ravendb", code = "decode", trap = true },
    { server = "rdb_topology_userinfo", backend = "ravendb", code = "decode", trap = true },

    -- etcd's shapes and revisions
    { server = "etcd_value_object", backend = "etcd", op = "get", code = "decode" },
    { server = "etcd_value_object", backend = "etcd", op = "get_many", code = "decode" },
    { server = "etcd_value_object", backend = "etcd", op = "list", code = "decode" },
    { server = "etcd_value_not_ours", backend = "etcd", op = "get", code = "decode" },
    { server = "etcd_revision_float", backend = "etcd", op = "get", code = "decode" },
    { server = "etcd_revision_float", backend = "etcd", op = "list", code = "decode" },
    { server = "etcd_revision_negative", backend = "etcd", op = "get", code = "decode" },
    { server = "etcd_revision_huge", backend = "etcd", op = "get_many", code = "decode" },
    { server = "etcd_put_zero", backend = "etcd", op = "put", code = "decode" },
    { server = "etcd_put_zero", backend = "etcd", op = "lock", code = "decode" },
    { server = "etcd_put_negative", backend = "etcd", op = "put", code = "decode" },
    { server = "etcd_token_crlf", backend = "etcd", user = "u", password = "p", code = "decode" },
    { server = "etcd_list_stuck", backend = "etcd", op = "list", code = "decode" },
    { server = "etcd_list_outside", backend = "etcd", op = "list", code = "decode" },
    { server = "etcd_list_outside", backend = "etcd", op = "get", code = "decode" },
    { server = "etcd_list_endless", backend = "etcd", op = "list", code = "http", timeout = 10,
      seconds = 120, mb = 400 },
}

--- The store target and open options of `case` against the server whose
-- listeners are `ports`; `tls`: the TLS options for https cases.
function cases.target(case, ports, tls)
    local port = math.floor(assert(ports[case.server], "no listener " .. case.server))
    local spec = { op = case.op, timeout = case.timeout or 1, user = case.user,
                   password = case.password }
    if case.backend == "etcd" then
        spec.target, spec.database = ("etcd://127.0.0.1:%d"):format(port), "app"
    else
        spec.target = ("%s://127.0.0.1:%d"):format(case.tls and "https" or "http", port)
        spec.database = "db"
        if case.tls then spec.tls = tls end
    end
    return spec
end

--- The code `case` expects through `transport` ("curl" or "ngx"): a set.
function cases.expected(case, transport)
    local code = case.code
    if type(code) == "string" then return { [code] = true } end
    if code[transport] then return { [code[transport]] = true } end
    return code
end

function cases.name(case)
    return ("%s: %s %s"):format(case.server, case.backend, case.op or "open")
end

return cases
