std = "max"
max_line_length = 100
files["spec"] = { std = "+busted", max_line_length = 120 }  -- test data runs long
exclude_files = { "build", "node_modules", "luarocks" }
