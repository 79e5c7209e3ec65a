--- The three backends as the per-backend specs run them. backends.each(run,
-- teardown) calls run(ctx) for the embedded store, the RavenDB emulator (a
-- real server when RAVENDB_URL is set) and the etcd cluster, where ctx is
--   name            what the spec's descriptions call it
--   open()          a store in a fresh place (file, database or key prefix)
--   target()        that place as bin/cmpxchg and the workers take it
--   example_args()  the --store (and --database) arguments of the examples
-- Databases made on RavenDB are deleted by `teardown` (busted's).
local cmpxchg = require "cmpxchg"
local helpers = require "spec.helpers"

local backends = {}

function backends.each(run, teardown)
    local path
    run({
        name = "embedded",
        open = function()
            path = helpers.tmpdb()
            return cmpxchg.open(path)
        end,
        target = function() return path end,
        example_args = function() return { "--store", path } end,
    })

    local ravendb = require "spec.support.ravendb_harness"
    local server = ravendb.server()
    local databases, db = {}, nil
    run({
        name = server.real and "ravendb " .. server.urls[1] or "ravendb emulator",
        open = function()
            db = ravendb.create_database(server)
            databases[#databases + 1] = db
            return cmpxchg.open(server.urls, { database = db, timeout = 5 })
        end,
        target = function() return server.urls[1] .. "#" .. db end,
        example_args = function() return { "--store", server.urls[1], "--database", db } end,
    })
    teardown(function()
        for _, name in ipairs(databases) do ravendb.delete_database(server, name) end
    end)

    local etcd = require "spec.support.etcd_harness"
    local cluster = etcd.cluster()
    local prefix
    run({
        name = "etcd cluster",
        open = function()
            prefix = etcd.fresh_prefix()
            return cmpxchg.open(cluster.endpoints, { database = prefix, timeout = 3 })
        end,
        target = function() return cluster.endpoints[1] .. "#" .. prefix end,
        example_args = function()
            return { "--store", cluster.endpoints[1], "--database", prefix }
        end,
    })
end

return backends
