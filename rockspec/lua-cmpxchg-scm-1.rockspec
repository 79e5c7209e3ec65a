rockspec_format = "3.0"
package = "lua-cmpxchg"
version = "scm-1"
source = {
    url = "git+file:///dev/null",   -- built from a checkout with `luarocks make`
}
description = {
    summary = "RavenDB-style compare-exchange and distributed locks for Lua",
    detailed = [[
Compare-exchange (versioned key/value with compare-and-set) with RavenDB's
semantics, and distributed locks on top of it held with Lua 5.4's <close>.
The embedded backend keeps everything in one SQLite file, across processes.]],
    license = "MIT",
}
dependencies = {
    "lua >= 5.1",
    "lua-cjson",
}
external_dependencies = {
    SQLITE = { header = "sqlite3.h", library = "sqlite3" },
    CURL = { header = "curl/curl.h", library = "curl" },   -- the HTTP backends' transport
}
build = {
    type = "builtin",
    install = { bin = { cmpxchg = "bin/cmpxchg" } },
    modules = {
        ["cmpxchg.core"] = {
            sources = { "csrc/cmpxchg_core.c", "csrc/embedded.c", "csrc/http.c",
                        "csrc/jsonpath.c", "csrc/keycase.c", "csrc/renew.c" },
            defines = { "_DEFAULT_SOURCE" },
            incdirs = { "$(SQLITE_INCDIR)", "$(CURL_INCDIR)" },
            libdirs = { "$(SQLITE_LIBDIR)", "$(CURL_LIBDIR)" },
            libraries = { "sqlite3", "curl", "pthread" },
        },
        ["cmpxchg"] = "lua/cmpxchg/init.lua",
        ["cmpxchg.admin"] = "lua/cmpxchg/admin.lua",
        ["cmpxchg.check"] = "lua/cmpxchg/check.lua",
        ["cmpxchg.embedded"] = "lua/cmpxchg/embedded.lua",
        ["cmpxchg.etcd"] = "lua/cmpxchg/etcd.lua",
        ["cmpxchg.json"] = "lua/cmpxchg/json.lua",
        ["cmpxchg.lease"] = "lua/cmpxchg/lease.lua",
        ["cmpxchg.lock"] = "lua/cmpxchg/lock.lua",
        ["cmpxchg.monitor"] = "lua/cmpxchg/monitor.lua",
        ["cmpxchg.nodes"] = "lua/cmpxchg/nodes.lua",
        ["cmpxchg.ravendb"] = "lua/cmpxchg/ravendb.lua",
        ["cmpxchg.renew_worker"] = "lua/cmpxchg/renew_worker.lua",
        ["cmpxchg.renewal"] = "lua/cmpxchg/renewal.lua",
        ["cmpxchg.runtime"] = "lua/cmpxchg/runtime.lua",
        ["cmpxchg.store"] = "lua/cmpxchg/store.lua",
        ["cmpxchg.timer_renewer"] = "lua/cmpxchg/timer_renewer.lua",
        ["cmpxchg.transport.curl"] = "lua/cmpxchg/transport/curl.lua",
        ["cmpxchg.transport.ngx"] = "lua/cmpxchg/transport/ngx.lua",
    },
}
