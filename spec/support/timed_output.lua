-- busted's plainTerminal output, and each spec file's time in seconds appended
-- to $CMPXCHG_TEST_TIMES ("SECONDS FILE" lines): scripts/run-tests names the
-- slowest files of each pass, so that the suite's time stays within CI's budget.
return function(options)
    local busted = require "busted"
    local handler = require "busted.outputHandlers.plainTerminal"(options)
    local path = os.getenv "CMPXCHG_TEST_TIMES"
    if path and path ~= "" then
        busted.subscribe({ "file", "end" }, function(file)
            local out = io.open(path, "a")
            if out then
                out:write(("%.1f %s\n"):format(file.duration or 0, file.name))
                out:close()
            end
            return nil, true
        end)
    end
    return handler
end
