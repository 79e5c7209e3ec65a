-- The fast sample of `make mutate` (issue 20): 8 mutants of
-- spec/mutants/catalogue.lua drawn across its layers, with a seed the output
-- prints (CMPXCHG_MUTATION_SEED=S draws the same again), each applied to a
-- scratch copy of this checkout and run against the specs the catalogue
-- lists for it; a mutant that survives them fails the run. Drawn only among
-- mutants whose specs take at most 30 s, never an equivalent mutant or a
-- known survivor, nor a stale one (its text is gone: reported, not drawn).
-- The plain pass only: scripts/run-tests leaves it out of the others, which
-- would build and run the very same again. It uses the servers of the run
-- it is part of; its nginx is its own (it serves the mutated code).
local runner = require "spec.mutants.runner"

local SAMPLE, MAX_COST = 8, 30

-- a spec run by a mutant's own runs never samples again
if os.getenv("CMPXCHG_MUTATION_DEPTH") then return end

local seed = tonumber(os.getenv("CMPXCHG_MUTATION_SEED")) or os.time()
local catalogue = runner.load_catalogue(".")
local picks, stale = runner.sample(catalogue, SAMPLE, seed, ".", MAX_COST)
do
    local ids = {}
    for i, m in ipairs(picks) do ids[i] = m.id end
    io.stdout:write(("\nmutation sample: seed %d (CMPXCHG_MUTATION_SEED=%d draws it again): %s%s\n")
        :format(seed, seed, table.concat(ids, ", "),
            stale > 0 and (" (%d stale mutants not drawn: see scripts/mutate --list)"):format(stale)
            or ""))
    io.stdout:flush()
end

describe("mutation sample, seed " .. seed, function()
    local campaign

    setup(function()
        campaign = runner.campaign({ root = ".", catalogue = catalogue, inherit_servers = true,
                                     log = function() end })
        assert(campaign:build(), "the checkout does not build")
    end)

    teardown(function()
        if campaign then campaign:close() end
    end)

    it("draws 8 mutants from at least 5 layers", function()
        assert.equal(SAMPLE, #picks)
        local layers, n = {}, 0
        for _, m in ipairs(picks) do
            if not layers[m.layer] then layers[m.layer], n = true, n + 1 end
        end
        assert.is_true(n >= 5, n .. " layers")
    end)

    for _, m in ipairs(picks) do
        it(("kills %s (%s: %s)"):format(m.id, m.file, m.guarantee), function()
            local r = campaign:run(m, { fallback = false })
            if r.status == "broken" or r.status == "stale" then
                error(("%s is %s (%s): spec/mutants/catalogue.lua needs bringing up to date")
                    :format(m.id, r.status, tostring(r.note)), 0)
            end
            assert.equal("killed", r.status, ("%s survived its specs: nothing checks that %s")
                :format(m.id, m.guarantee))
        end)
    end
end)
