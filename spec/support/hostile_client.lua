--- Runs one hostile-server case (its JSON in arg[1]) in this process, with
-- the libcurl transport, and prints the result as one JSON line
-- (spec/support/hostile_run.lua).
local cjson = require "cjson"
local hostile_run = require "spec.support.hostile_run"

io.write(cjson.encode(hostile_run.case(cjson.decode(arg[1]))), "\n")
