rockspec_format = "3.0"
package = "lua-cmpxchg"
version = "scm-1"
-- For `luarocks make` in a checkout (it builds what is there, fetching
-- nothing). A release is lua-cmpxchg-<version>-1.rockspec, and `make dist`
-- packs it with its sources into a .src.rock that installs anywhere.
source = {
    url = "git+file:///dev/null",
}
description = {
    summary = "RavenDB-style compare-exchange and distributed locks for Lua",
    detailed = [[
Compare-exchange (versioned key/value with compare-and-set) with RavenDB's
semantics, and distributed locks on top of it held with Lua 5.4's <close>.
The embedded backend keeps everything in one SQLite file, across processes.
Needs lua-cjson (Debian: lua-cjson; else `luarocks install lua-cjson`).]],
    license = "MIT",
}
-- lua-cjson is not listed: LuaRocks only counts rocks, so a cjson from the
-- system's packages (Debian's lua-cjson) would not satisfy it and every
-- install would go to the network for a second copy. `require "cmpxchg"`
-- says how to get it when it is missing.
dependencies = {
    "lua >= 5.1",
}
-- Only the libraries are looked for: LuaRocks finds them in the multiarch
-- directories (lib/x86_64-linux-gnu) but never looks for headers there, where
-- Debian keeps curl/curl.h; the compiler finds that header by itself.
external_dependencies = {
    SQLITE = { library = "sqlite3" },
    CURL = { library = "curl" },   -- the HTTP backends' transport
}
build = {
    type = "builtin",
    install = { bin = { cmpxchg = "bin/cmpxchg" } },
    modules = {
        ["cmpxchg.coalesce"] = "lua/cmpxchg/coalesce.lua",
        ["cmpxchg.core"] = {
            sources = { "csrc/module.c", "csrc/util.c", "csrc/keys.c", "csrc/jsonpick.c",
                        "csrc/storedir.c", "csrc/embedded.c", "csrc/http.c", "csrc/stream.c",
                        "csrc/renew.c" },
            defines = { "_DEFAULT_SOURCE" },
            incdirs = { "$(SQLITE_INCDIR)", "$(CURL_INCDIR)" },
            libdirs = { "$(SQLITE_LIBDIR)", "$(CURL_LIBDIR)" },
            libraries = { "sqlite3", "curl", "pthread" },
        },
        ["cmpxchg"] = "lua/cmpxchg/init.lua",
        ["cmpxchg.admin"] = "lua/cmpxchg/admin.lua",
        ["cmpxchg.check"] = "lua/cmpxchg/check.lua",
        ["cmpxchg.cluster"] = "lua/cmpxchg/cluster.lua",
        ["cmpxchg.documents"] = "lua/cmpxchg/documents.lua",
        ["cmpxchg.election"] = "lua/cmpxchg/election.lua",
        ["cmpxchg.embedded"] = "lua/cmpxchg/embedded.lua",
        ["cmpxchg.etcd"] = "lua/cmpxchg/etcd.lua",
        ["cmpxchg.json"] = "lua/cmpxchg/json.lua",
        ["cmpxchg.leader_job"] = "lua/cmpxchg/leader_job.lua",
        ["cmpxchg.lease"] = "lua/cmpxchg/lease.lua",
        ["cmpxchg.lock"] = "lua/cmpxchg/lock.lua",
        ["cmpxchg.monitor"] = "lua/cmpxchg/monitor.lua",
        ["cmpxchg.observe"] = "lua/cmpxchg/observe.lua",
        ["cmpxchg.handoff"] = "lua/cmpxchg/handoff.lua",
        ["cmpxchg.queue"] = "lua/cmpxchg/queue.lua",
        ["cmpxchg.ravendb"] = "lua/cmpxchg/ravendb.lua",
        ["cmpxchg.renew_worker"] = "lua/cmpxchg/renew_worker.lua",
        ["cmpxchg.renewal"] = "lua/cmpxchg/renewal.lua",
        ["cmpxchg.runtime"] = "lua/cmpxchg/runtime.lua",
        ["cmpxchg.semaphore"] = "lua/cmpxchg/semaphore.lua",
        ["cmpxchg.store"] = "lua/cmpxchg/store.lua",
        ["cmpxchg.target"] = "lua/cmpxchg/target.lua",
        ["cmpxchg.timer_renewer"] = "lua/cmpxchg/timer_renewer.lua",
        ["cmpxchg.transaction"] = "lua/cmpxchg/transaction.lua",
        ["cmpxchg.wait"] = "lua/cmpxchg/wait.lua",
        ["cmpxchg.watch"] = "lua/cmpxchg/watch.lua",
        ["cmpxchg.transport.curl"] = "lua/cmpxchg/transport/curl.lua",
        ["cmpxchg.transport.ngx"] = "lua/cmpxchg/transport/ngx.lua",
    },
}
