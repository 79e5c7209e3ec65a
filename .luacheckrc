std = "max"
max_line_length = 100
files["spec"] = { std = "+busted", max_line_length = 120 }  -- test data runs long
exclude_files = { "build", "node_modules", "luarocks" }
-- code that only runs inside nginx (lua-nginx-module's globals)
files["spec/support/nginx"] = { std = "max+ngx_lua", max_line_length = 120 }
files["examples/nginx"] = { std = "max+ngx_lua" }
