-- luacheck: std +busted
-- A smoke run of `make bench` (bench/run.lua --quick): a few operations of every
-- comparison, with the servers it starts itself, so the benchmark cannot rot.
-- Correctness only: the figures of a run this short mean nothing and are not checked.
local helpers = require "spec.helpers"

local LUA = os.getenv("LUA") or "lua5.4"

describe("make bench, quick smoke run", function()
    it("measures every section, prints one table and writes the CSV", function()
        helpers.sh("make --no-print-directory bench-bin")
        local out_dir = os.tmpname()
        os.remove(out_dir)
        -- the plain build, without the ASan run's preload: node, etcd and nginx run under it
        local p = assert(io.popen(("env -u LD_PRELOAD timeout 300 %s bench/run.lua --quick --out %s 2>&1")
            :format(LUA, helpers.shell_quote(out_dir))))
        local output = p:read("*a")
        local ok = p:close()
        assert.is_true(ok, output)
        for _, section in ipairs({ "1 RavenDB", "2 etcd", "3 embedded", "4 locks", "5 memory",
                "6 transactions", "7 fairness", "8 election", "9 scale", "10 nginx" }) do
            assert.is_truthy(output:find("| " .. section, 1, true), section .. " missing:\n" .. output)
        end
        assert.is_falsy(output:find("overlaps!", 1, true), output)
        assert.is_truthy(output:find("targets missed: %d+"), output)
        -- every lock implementation that ran made acquisitions
        for line in output:gmatch("| 4 locks[^\n]+") do
            if not line:find("skipped", 1, true) then
                local rate = line:match("^|[^|]+|[^|]+|[^|]+|%s*(%d+)%s*|")
                assert.is_truthy(rate and tonumber(rate) > 0, line)
            end
        end
        -- every fairness run measured waits, and every election failed over
        for line in output:gmatch("| 7 fairness[^\n]+") do
            assert.is_truthy(line:find("%d+ waits: mean"), line)
        end
        for line in output:gmatch("| 8 election[^\n]+") do
            assert.is_truthy(line:find("SIGKILL %-> next on_elected: %d"), line)
        end
        -- every nginx case measured (or says why it could not)
        for line in output:gmatch("| 10 nginx[^\n]+") do
            assert.is_truthy(line:find("requests/s to the server while %d+ wait")
                or line:find("%d+ sections, counter exact") or line:find("skipped"), line)
        end
        local csv = assert(io.open(out_dir .. "/bench.csv")):read("*a")
        local lines = select(2, csv:gsub("\n", ""))
        assert.is_true(lines > 40, csv)
        assert.is_truthy(csv:find("^section,case,impl,"), csv)
        helpers.sh("rm -rf " .. helpers.shell_quote(out_dir))
    end)
end)
