--- The three backends as the per-backend specs run them: one constructor
-- each, and backends.each(run, teardown) that calls run(ctx) for all three
-- (the embedded store, the RavenDB emulator or a real server when
-- RAVENDB_URL is set, the etcd cluster). A ctx is
--   name            what the spec's descriptions call it
--   open([opts])    a store in a fresh place (file, database or key prefix);
--                   opts add to or replace the default open options
--   target()        that place as bin/cmpxchg and the workers take it
--   example_args()  the --store (and --database) arguments of the examples
-- plus server (RavenDB) or cluster (etcd), what the constructor started.
-- Databases made on RavenDB are deleted by `teardown` (busted's).
local cmpxchg = require "cmpxchg"
local helpers = require "spec.helpers"

local backends = {}

local function with(defaults, opts)
    local o = {}
    for k, v in pairs(defaults) do o[k] = v end
    for k, v in pairs(opts or {}) do o[k] = v end
    return o
end

function backends.embedded()
    local path
    return {
        name = "embedded",
        open = function(opts)
            path = helpers.tmpdb()
            return cmpxchg.open(path, opts)
        end,
        target = function() return path end,
        example_args = function() return { "--store", path } end,
    }
end

function backends.ravendb(teardown)
    local harness = require "spec.support.ravendb_harness"
    local server = harness.server()
    local databases, db = {}, nil
    teardown(function()
        for _, name in ipairs(databases) do harness.delete_database(server, name) end
    end)
    return {
        name = server.real and "ravendb " .. server.urls[1] or "ravendb emulator",
        server = server,
        open = function(opts)
            db = harness.create_database(server)
            databases[#databases + 1] = db
            return cmpxchg.open(server.urls, with({ database = db, timeout = 5 }, opts))
        end,
        target = function() return server.urls[1] .. "#" .. db end,
        example_args = function() return { "--store", server.urls[1], "--database", db } end,
    }
end

function backends.etcd()
    local harness = require "spec.support.etcd_harness"
    local cluster = harness.cluster()
    local prefix
    return {
        name = "etcd cluster",
        cluster = cluster,
        open = function(opts)
            prefix = harness.fresh_prefix()
            return cmpxchg.open(cluster.endpoints, with({ database = prefix, timeout = 3 }, opts))
        end,
        target = function() return cluster.endpoints[1] .. "#" .. prefix end,
        example_args = function()
            return { "--store", cluster.endpoints[1], "--database", prefix }
        end,
    }
end

function backends.each(run, teardown)
    run(backends.embedded())
    run(backends.ravendb(teardown))
    run(backends.etcd())
end

return backends
