--- Test harness for the etcd backend: 3-member clusters on 127.0.0.1 run by
-- scripts/etcd-cluster (plain, or TLS with etcd auth), and a fresh key
-- prefix (the database option) per test.
local core = require "cmpxchg.core"

local harness = {}

local sh = require("spec.helpers").sh
harness.sh = sh

local function script(variant, args)
    return sh("scripts/etcd-cluster " .. args .. (variant == "tls" and " --tls" or ""))
end

--- A running cluster: {endpoints = {...}, certs = dir (tls)}; started when needed.
function harness.cluster(variant)
    script(variant, "start")
    local c = { variant = variant, endpoints = {} }
    for url in script(variant, "endpoints"):gmatch("[^,%s]+") do
        c.endpoints[#c.endpoints + 1] = url:gsub("^http", "etcd")
    end
    if variant == "tls" then c.certs = script(variant, "certs") end
    function c.run(args) return script(variant, args) end
    return c
end

local counter = 0

--- A key prefix no other test uses.
function harness.fresh_prefix()
    counter = counter + 1
    return ("t%d_%d_%d"):format(core.pid(), counter, math.random(1e6))
end

return harness
