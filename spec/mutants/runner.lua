--- The mutation runner behind `make mutate` (scripts/mutate) and the fast
-- sample of `make test` (spec/integration/mutation_sample_spec.lua).
--
-- Each mutant of spec/mutants/catalogue.lua names a file, a snippet of its
-- text that occurs there exactly once, and the text that replaces it: no
-- line numbers, so a mutant follows its code when lines move. When the
-- snippet is no longer in its file, the runner looks for it (once) in the
-- file's siblings (a C file split in two, say) and says where it went; found
-- nowhere, the mutant is "stale": neither killed nor survived, and the
-- catalogue wants looking after.
--
-- A campaign works in a scratch copy of the checkout (tracked and untracked
-- files, never build/ nor .git), so the checkout is never touched: for each
-- mutant it applies the change, builds the core when the file is C (and the
-- LuaJIT core, which nginx loads, before any spec that runs nginx), runs the
-- specs the catalogue lists for it, and, for a survivor, every spec file of
-- the plain pass, each bounded in time, stopping at the first kill. A kill
-- is confirmed by running the failing test alone again, with the mutant (it
-- must fail again) and without it (it must pass); a crash or a timeout, by
-- running the whole file again. A flaky test proves nothing (it is
-- reported, and left out). Then the file is restored.
--
-- Results: killed (by a spec file and test), survived, stale, broken (the
-- mutant does not build or parse: never counted as a kill unless the
-- catalogue says `build_kills`), equivalent (the catalogue says why; not
-- run). The score counts killed / (killed + survived).
local runner = {}

local LUA = "lua5.4"            -- the plain pass is the Lua 5.4 one
local BUSTED = "/usr/bin/busted"
local SAMPLE_SPEC = "spec/integration/mutation_sample_spec.lua"

--[[ Shell and files ]]

local function q(s)
    return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
runner.quote = q

--- Runs `cmd` with /bin/sh: its exit code (128 + N for signal N).
local function sh(cmd)
    local ok, how, code = os.execute(cmd)
    if type(ok) == "number" then return ok end     -- Lua 5.1: a raw status
    if how == "signal" then return 128 + code end
    return ok and 0 or code
end

local function capture(cmd)
    local p = assert(io.popen(cmd))
    local out = p:read("*a")
    p:close()
    return out
end

local function read(path)
    local f = io.open(path, "rb")
    if not f then return nil end
    local text = f:read("*a")
    f:close()
    return text
end

local function write(path, text)
    local f = assert(io.open(path, "wb"))
    assert(f:write(text))
    assert(f:close())
end

local function now()
    return tonumber(capture("date +%s.%N")) or os.time()
end

--- Occurrences of `s` in `text` (plain), and where the first one starts.
local function occurrences(text, s)
    local n, first, init = 0, nil, 1
    while true do
        local i = text:find(s, init, true)
        if not i then return n, first end
        n, first = n + 1, first or i
        init = i + 1
    end
end

local function dirname(path) return path:match("^(.*)/[^/]*$") or "." end
local function extension(path) return path:match("%.([%w]+)$") end

--[[ The catalogue ]]

--- The catalogue of the checkout at `root`, checked: unique ids, the
-- fields every mutant needs.
function runner.load_catalogue(root)
    local cat = dofile((root or ".") .. "/spec/mutants/catalogue.lua")
    local seen = {}
    for i, m in ipairs(cat.mutants) do
        local where = ("catalogue mutant #%d (%s)"):format(i, tostring(m.id))
        assert(type(m.id) == "string" and not seen[m.id], where .. ": missing or repeated id")
        seen[m.id] = true
        for _, field in ipairs({ "layer", "file", "from", "to", "guarantee" }) do
            assert(type(m[field]) == "string", where .. ": no " .. field)
        end
        assert(cat.layers[m.layer], where .. ": unknown layer " .. m.layer)
        assert(m.from ~= m.to, where .. ": from and to are the same")
        assert(m.equivalent or (type(m.specs) == "table" and #m.specs > 0),
            where .. ": no specs")
    end
    return cat
end

--- Where mutant `m` applies in the tree at `dir`: file, text, position, and
-- a note when it moved to a sibling file; or nil, why (stale).
function runner.locate(dir, m)
    local text = read(dir .. "/" .. m.file)
    if text then
        local n, at = occurrences(text, m.from)
        if n == 1 then return m.file, text, at end
        if n > 1 then return nil, ("snippet found %d times in %s"):format(n, m.file) end
    end
    -- moved? the same text, once, in one file of the same directory and kind
    local folder, ext = dirname(m.file), extension(m.file)
    local hits = {}
    for name in capture("ls -1 " .. q(dir .. "/" .. folder) .. " 2>/dev/null"):gmatch("[^\n]+") do
        local path = folder .. "/" .. name
        if path ~= m.file and (extension(name) == ext or (ext == "c" and extension(name) == "h")) then
            local other = read(dir .. "/" .. path)
            local n, at = occurrences(other or "", m.from)
            if n > 0 then hits[#hits + 1] = { path = path, n = n, text = other, at = at } end
        end
    end
    if #hits == 1 and hits[1].n == 1 then
        return hits[1].path, hits[1].text, hits[1].at, "moved from " .. m.file
    end
    if text == nil and #hits == 0 then return nil, m.file .. " is gone and the snippet with it" end
    return nil, ("snippet not found in %s%s"):format(m.file,
        #hits > 0 and (" (but %d times elsewhere in %s/)"):format(#hits, folder) or "")
end

--- The spec entries of a mutant: {file =, filter = }.
local function entries(m)
    local out = {}
    for _, s in ipairs(m.specs or {}) do
        if type(s) == "string" then out[#out + 1] = { file = s }
        else out[#out + 1] = { file = s[1], filter = s.filter } end
    end
    return out
end
runner.entries = entries

--- Estimated seconds to run a mutant's specs (the catalogue's cost table).
function runner.cost(cat, m)
    local total = 0
    for _, e in ipairs(entries(m)) do total = total + (cat.cost[e.file] or 60) end
    return total
end

--[[ A deterministic generator for the sample: the same on every Lua ]]

local function generator(seed)
    local state = math.floor(seed) % 2147483647
    if state <= 0 then state = state + 2147483646 end
    return function(n)          -- 1..n (Park and Miller)
        state = (state * 16807) % 2147483647
        return state % n + 1
    end
end

--- `n` mutants drawn with `seed`, spread over the layers (one layer after
-- another, in an order drawn too), among those a short run can kill: not
-- equivalent, not a known survivor, not stale in the tree at `root`, at most
-- `max_cost` seconds of specs. Returns the picks and the number left out as
-- stale.
function runner.sample(cat, n, seed, root, max_cost)
    local random = generator(seed)
    local by_layer, stale = {}, 0
    for _, m in ipairs(cat.mutants) do
        if not m.equivalent and not m.survives and not m.build_kills
                and runner.cost(cat, m) <= (max_cost or 30) then
            if runner.locate(root, m) then
                by_layer[m.layer] = by_layer[m.layer] or {}
                table.insert(by_layer[m.layer], m)
            else
                stale = stale + 1
            end
        end
    end
    local layers = {}
    for name in pairs(by_layer) do layers[#layers + 1] = name end
    table.sort(layers)
    for i = #layers, 2, -1 do               -- Fisher-Yates
        local j = random(i)
        layers[i], layers[j] = layers[j], layers[i]
    end
    local picks = {}
    while #picks < n and #layers > 0 do
        for i = #layers, 1, -1 do
            local pool = by_layer[layers[i]]
            if #picks < n and #pool > 0 then
                picks[#picks + 1] = table.remove(pool, random(#pool))
            end
            if #pool == 0 then table.remove(layers, i) end
        end
    end
    return picks, stale
end

--[[ A campaign: a scratch tree, its servers, its runs ]]

local Campaign = {}
Campaign.__index = Campaign

--- A campaign in work directory `opts.work` (made when absent) on a copy of
-- the checkout at `opts.root`. opts.servers: the directory under which the
-- campaign keeps its own server state; with opts.inherit_servers, the
-- environment's RAVENDB_EMULATOR_DIR and ETCD_CLUSTER_DIR are used instead
-- when set (the fast sample runs inside `make test`, which has them).
function runner.campaign(opts)
    local self = setmetatable({
        root = opts.root or ".",
        work = opts.work,
        log = opts.log or function(line) io.stdout:write(line, "\n") io.stdout:flush() end,
        scale = opts.timeout_scale or 1,
        cat = opts.catalogue,
        applied = {},           -- the mutants in the tree now: {m, file, text, c}
        unconfirmed = {},       -- tests that failed without the mutant too
    }, Campaign)
    if not self.work then
        self.work = capture("mktemp -d /tmp/cmpxchg-mutate.XXXXXX"):gsub("%s+$", "")
        sh("chmod 755 " .. q(self.work))    -- nginx's workers (nobody) read the tree's code
        self.own_work = true
    end
    self.root = capture("cd " .. q(self.root) .. " && pwd"):gsub("%s+$", "")
    self.tree = self.work .. "/tree"
    local servers = opts.servers or (self.work .. "/servers")
    local env = os.getenv
    self.env = {
        RAVENDB_EMULATOR_DIR = opts.inherit_servers and env("RAVENDB_EMULATOR_DIR")
            or servers .. "/rdb",
        ETCD_CLUSTER_DIR = opts.inherit_servers and env("ETCD_CLUSTER_DIR")
            or servers .. "/etcd",
        NGINX_TEST_DIR = servers .. "/ngx",     -- never shared: it runs the mutated code
    }
    self.own_servers = not (opts.inherit_servers and env("RAVENDB_EMULATOR_DIR"))
    self.cat = self.cat or runner.load_catalogue(self.root)
    self:copy_tree(opts.rev)
    return self
end

--- The tree at root, as git sees it (tracked and untracked files, not the
-- ignored ones), into the scratch directory; or, with `rev`, the tree of
-- that commit (the catalogue stays this checkout's: a score before and
-- after new tests). The referee's node_modules (ignored, and big) is linked.
function Campaign:copy_tree(rev)
    sh("rm -rf " .. q(self.tree) .. " && mkdir -p " .. q(self.tree))
    if rev then
        assert(sh(("git -C %s archive --format=tar %s | tar -C %s -xf -"):format(q(self.root),
            q(rev), q(self.tree))) == 0, "git archive " .. rev .. " failed")
    else
        local list = self.work .. "/files"
        assert(sh(("git -C %s ls-files -z --cached --others --exclude-standard > %s")
            :format(q(self.root), q(list))) == 0, "git ls-files failed in " .. self.root)
        assert(sh(("tar -C %s --null --ignore-failed-read -T %s -cf - 2>/dev/null | tar -C %s -xf -")
            :format(q(self.root), q(list), q(self.tree))) == 0, "copying the tree failed")
    end
    local modules = "spec/support/ravendb/node_modules"
    local real = capture("readlink -f " .. q(self.root .. "/" .. modules) .. " 2>/dev/null")
        :gsub("%s+$", "")
    if real ~= "" and sh("test -d " .. q(real)) == 0 then
        sh(("rm -rf %s && ln -s %s %s"):format(q(self.tree .. "/" .. modules), q(real),
            q(self.tree .. "/" .. modules)))
    end
end

--- Builds the core in the scratch tree (and the LuaJIT one, which nginx
-- loads, with `luajit`): true, or false and the compiler's complaint.
function Campaign:build(luajit)
    local log = self.work .. "/build.log"
    local make = ("make -C %s --no-print-directory EXTRA_CFLAGS=-Werror"):format(q(self.tree))
    local cmd = make .. " all > " .. q(log) .. " 2>&1"
    if luajit then
        cmd = cmd .. " && " .. make .. " BUILD=build/luajit LUA_PC=luajit all >> " .. q(log)
            .. " 2>&1"
    end
    if sh(cmd) ~= 0 then return false, (read(log) or ""):sub(-600) end
    return true
end

--- Spec files that run nginx (it loads the LuaJIT core): the LuaJIT core
-- is built before them, and only then (make does nothing when it is fresh).
local function needs_luajit(file)
    return file:find("nginx", 1, true) or file:find("bench", 1, true)
end

local function env_prefix(self)
    local parts = { "env -u LD_PRELOAD -u CMPXCHG_TEST_CPATH", "LUA=" .. LUA,
                    "CMPXCHG_MUTATION_DEPTH=1" }
    for k, v in pairs(self.env) do parts[#parts + 1] = k .. "=" .. q(v) end
    return table.concat(parts, " ")
end

--- Stops the nginx of the campaign (it runs the code of the last run).
function Campaign:stop_nginx()
    if read(self.env.NGINX_TEST_DIR .. "/master.pid") then
        sh(("NGINX_TEST_DIR=%s %s/scripts/nginx-test-server stop >/dev/null 2>&1")
            :format(q(self.env.NGINX_TEST_DIR), q(self.tree)))
    end
end

local function pattern_escape(s)
    return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

--- Runs one spec entry in the scratch tree: ok, failed tests (their full
-- names), a detail (timeout, exit status) when no test was named.
function Campaign:busted(entry, opts)
    opts = opts or {}
    if needs_luajit(entry.file) then
        local built, err = self:build(true)
        if not built then error({ broken = "does not build for LuaJIT: " .. err }) end
    end
    local log = self.work .. "/busted.log"
    local seconds = math.floor(math.max(opts.min_timeout or 120,
        4 * (self.cat.cost[entry.file] or 60)) * self.scale)
    local args = { "-o TAP" }
    if not opts.keep_going then args[#args + 1] = "--no-keep-going" end
    if entry.filter then args[#args + 1] = "--filter=" .. q(entry.filter) end
    for _, name in ipairs(opts.only or {}) do
        args[#args + 1] = "--filter=" .. q("^" .. pattern_escape(name) .. "$")
    end
    for _, name in ipairs(opts.skip or {}) do
        args[#args + 1] = "--filter-out=" .. q("^" .. pattern_escape(name) .. "$")
    end
    local cmd = ("cd %s && %s timeout -k 20 %d %s %s %s %s > %s 2>&1"):format(q(self.tree),
        env_prefix(self), seconds, LUA, BUSTED, table.concat(args, " "), q(entry.file), q(log))
    local code = sh(cmd)
    self:stop_nginx()
    if code == 130 or code == 143 then error("interrupted", 0) end
    local out = read(log) or ""
    local failed = {}
    for name in out:gmatch("\nnot ok %d+ %- ([^\n]*)") do failed[#failed + 1] = name end
    if out:match("^not ok %d+ %- ([^\n]*)") then
        table.insert(failed, 1, out:match("^not ok %d+ %- ([^\n]*)"))
    end
    if code == 124 or code == 137 then
        return false, failed, ("timed out after %d s"):format(seconds)
    end
    if code ~= 0 and #failed == 0 then
        return false, failed, ("busted exited %d: %s"):format(code, out:sub(-300))
    end
    return code == 0 and #failed == 0, failed, nil
end

--- Every applied mutant's file back to its original text.
function Campaign:restore()
    local c = false
    for i = #self.applied, 1, -1 do
        local a = self.applied[i]
        write(self.tree .. "/" .. a.file, a.text)
        c = c or a.c
    end
    self.applied = {}
    if c then assert(self:build(), "the unmutated tree does not build") end
end

--- Applies mutant `m` at `at` of `file` (whose text is `text`), building
-- the core when it is C unless `nobuild`: true, or false and why not.
function Campaign:apply(m, file, text, at, nobuild)
    local mutated = text:sub(1, at - 1) .. m.to .. text:sub(at + #m.from)
    local c = file:match("%.[ch]$") ~= nil
    if not c and file:match("%.lua$") then
        local chunk, err = load(mutated, "@" .. file)
        if not chunk then return false, "does not parse: " .. tostring(err) end
    end
    write(self.tree .. "/" .. file, mutated)
    self.applied[#self.applied + 1] = { m = m, file = file, text = text, c = c }
    if c and not nobuild then
        local ok, err = self:build()
        if not ok then return false, "does not build: " .. err end
    end
    return true
end

--- The mutants of `applied` (a list restore() emptied) applied again.
function Campaign:reapply(applied)
    local c = false
    for _, a in ipairs(applied) do
        local file, text, at = runner.locate(self.tree, a.m)
        assert(file == a.file, "a mutant no longer applies after restoring")
        assert(self:apply(a.m, file, text, at, true))
        c = c or a.c
    end
    if c then assert(self:build(), "the mutated tree built before and does not now") end
end

--- Runs `entry` against the applied mutants. A failing test counts when it
-- fails again, alone, with them, and passes without them (then the tree is
-- left restored): a flaky test is not a kill. Returns the killing test (or
-- detail: a timeout, a crash), or nil.
function Campaign:try(entry, opts)
    local skip = {}
    for _ = 1, 3 do
        local ok, failed, detail = self:busted(entry, { skip = skip, min_timeout = opts.min_timeout })
        if ok then return nil end
        if #failed == 0 then return self:confirm_whole(entry, opts, detail) end
        local test = failed[1]
        local again = not self:busted(entry, { only = { test }, keep_going = true,
                                               min_timeout = opts.min_timeout })
        local applied = self.applied
        self:restore()
        local clean = again and self:busted(entry, { only = { test }, keep_going = true,
                                                     min_timeout = opts.min_timeout })
        if clean then return test end
        self.unconfirmed[entry.file .. ": " .. test] = true
        self.log(("   (%s: '%s' %s: not counted)"):format(entry.file, test, again
            and "fails without the mutant too" or "passed when run again with the mutant"))
        skip[#skip + 1] = test
        self:reapply(applied)
    end
    return nil
end

--- A run that failed with no test to name (a crash, a timeout) counts when
-- the whole entry passes without the mutants, and, for a crash, fails again
-- with them (a timeout is not waited out twice): the detail, or nil.
function Campaign:confirm_whole(entry, opts, detail)
    local again = detail:match("^timed out") ~= nil or
        not self:busted(entry, { min_timeout = opts.min_timeout })
    local applied = self.applied
    self:restore()
    if again and self:busted(entry, { keep_going = true, min_timeout = opts.min_timeout }) then
        return detail
    end
    local what = detail:match("^[^:]*")
    self.unconfirmed[entry.file .. ": " .. what] = true
    self.log(("   (%s: %s, %s: not counted)"):format(entry.file, what, again
        and "and so it does without the mutant" or "but not when run again with the mutant"))
    self:reapply(applied)
    return nil
end

--- Every spec file of the plain pass, quickest first (the catalogue's cost
-- table), the sample's own spec excepted, and the allocation-failure checker
-- (scripts/run-tests runs it once, in the asan pass, with its own host).
function Campaign:plain_pass()
    local files = {}
    for _, dir in ipairs({ "spec/unit", "spec/core", "spec/integration" }) do
        for name in capture("ls -1 " .. q(self.tree .. "/" .. dir)):gmatch("[^\n]+") do
            local path = dir .. "/" .. name
            if name:match("_spec%.lua$") and path ~= SAMPLE_SPEC and
                    not name:match("^alloc_failure_") then
                files[#files + 1] = path
            end
        end
    end
    local cost = self.cat.cost
    table.sort(files, function(a, b)
        local ca, cb = cost[a] or 60, cost[b] or 60
        if ca ~= cb then return ca < cb end
        return a < b
    end)
    return files
end

--- Runs mutant `m`: a result {id, layer, file, status, by, note, seconds}.
-- opts.fallback: the whole plain pass for a survivor of its own specs.
function Campaign:run(m, opts)
    opts = opts or {}
    local started = now()
    local result = { id = m.id, layer = m.layer, file = m.file, guarantee = m.guarantee }
    local function done(status, by, note)
        result.status, result.by, result.note = status, by, note
        result.seconds = now() - started
        return result
    end
    if m.equivalent then return done("equivalent", nil, m.equivalent) end
    local file, text, at, moved = runner.locate(self.tree, m)
    if not file then return done("stale", nil, text) end
    result.file = file
    local ok, err = self:apply(m, file, text, at)
    local function broken(why)
        self:restore()
        if m.build_kills then return done("killed", "the build: " .. m.build_kills, why) end
        return done("broken", nil, why)
    end
    if not ok then return broken(err) end
    local finished, failure = pcall(function()
        for _, entry in ipairs(entries(m)) do
            -- a spec the tree does not have (an older commit's, with --rev)
            local by = read(self.tree .. "/" .. entry.file) and self:try(entry, {})
            if by then
                result.by = entry.file .. ": " .. by
                return
            end
        end
        if opts.fallback then
            for _, path in ipairs(self:plain_pass()) do
                local by = self:try({ file = path }, { min_timeout = 300 })
                if by then
                    result.by = path .. ": " .. by
                    result.fallback = true
                    return
                end
            end
        end
    end)
    if not finished and type(failure) == "table" and failure.broken then
        return broken(failure.broken)
    end
    self:restore()
    if not finished then error(failure, 0) end
    if result.by then return done("killed", result.by, moved) end
    return done("survived", nil, m.survives or moved)
end

--- The whole plain pass once, with every mutant of `ms` applied (each in a
-- file of its own): true when nothing kills them, so that each of them
-- survives it (a mutant could hide another's effect in the same code: a
-- batch never holds two mutants of one file). A failure is confirmed as a
-- kill is; then false, and the batch's mutants are to be run one by one.
function Campaign:batch_survives(ms)
    local c = false
    for _, m in ipairs(ms) do
        local file, text, at = runner.locate(self.tree, m)
        local ok = file and self:apply(m, file, text, at, true)
        if not ok then
            self:restore()
            return false
        end
        c = c or file:match("%.[ch]$") ~= nil
    end
    if c and not self:build() then
        self:restore()
        return false
    end
    for _, path in ipairs(self:plain_pass()) do
        local ok, by = pcall(self.try, self, { file = path }, { min_timeout = 300 })
        if not ok or by then
            self.log(("   the batch is killed by %s: %s"):format(path, tostring(by)))
            self:restore()
            return false
        end
    end
    self:restore()
    return true
end

--- Stops the campaign's servers and removes its scratch tree.
function Campaign:close()
    self:stop_nginx()
    if self.own_servers then
        local tree = q(self.tree)
        sh(("RAVENDB_EMULATOR_DIR=%s %s/scripts/ravendb-emulator stop >/dev/null 2>&1")
            :format(q(self.env.RAVENDB_EMULATOR_DIR), tree))
        sh(("RAVENDB_EMULATOR_DIR=%s %s/scripts/ravendb-emulator stop >/dev/null 2>&1")
            :format(q(self.env.RAVENDB_EMULATOR_DIR .. "-tls"), tree))
        sh(("ETCD_CLUSTER_DIR=%s %s/scripts/etcd-cluster stop >/dev/null 2>&1")
            :format(q(self.env.ETCD_CLUSTER_DIR), tree))
        sh(("ETCD_CLUSTER_DIR=%s %s/scripts/etcd-cluster stop --tls >/dev/null 2>&1")
            :format(q(self.env.ETCD_CLUSTER_DIR), tree))
    end
    if self.own_work then sh("rm -rf " .. q(self.work)) else sh("rm -rf " .. q(self.tree)) end
end

--[[ Reports ]]

local function counted(results)
    local n = { killed = 0, survived = 0, stale = 0, broken = 0, equivalent = 0 }
    for _, r in ipairs(results) do n[r.status] = n[r.status] + 1 end
    return n
end

--- The score line: killed / (killed + survived).
function runner.score(results)
    local n = counted(results)
    local scored = n.killed + n.survived
    return ("score: %d killed of %d (%.1f%%); %d survived, %d equivalent, %d stale, %d broken")
        :format(n.killed, scored, scored > 0 and 100 * n.killed / scored or 0, n.survived,
            n.equivalent, n.stale, n.broken), n
end

local function verdict_text(r)
    if r.status == "killed" then
        return "killed by " .. r.by .. (r.fallback and " (plain pass)" or "")
    end
    local text = r.status
    if r.note then text = text .. ": " .. r.note end
    return text
end
runner.verdict_text = verdict_text

--- The table of results, one mutant a line.
function runner.table(results)
    local lines = {}
    local w_id, w_file = #"mutant", #"where"
    for _, r in ipairs(results) do
        w_id, w_file = math.max(w_id, #r.id), math.max(w_file, #r.file)
    end
    local fmt = "%-" .. w_id .. "s  %-" .. w_file .. "s  %6s  %s"
    lines[1] = fmt:format("mutant", "where", "secs", "result")
    for _, r in ipairs(results) do
        lines[#lines + 1] = fmt:format(r.id, r.file, ("%.0f"):format(r.seconds or 0),
            verdict_text(r))
    end
    return table.concat(lines, "\n")
end

--[[ Results files (one line per mutant: the jobs of a campaign write them) ]]

local FIELDS = { "id", "layer", "file", "status", "seconds", "by", "note", "fallback" }

local function encode_line(r)
    local parts = {}
    for i, f in ipairs(FIELDS) do
        parts[i] = tostring(r[f] == nil and "" or r[f]):gsub("[\t\n\\]",
            { ["\t"] = "\\t", ["\n"] = "\\n", ["\\"] = "\\\\" })
    end
    return table.concat(parts, "\t")
end

local function decode_line(line)
    local r, i = {}, 0
    for field in (line .. "\t"):gmatch("([^\t]*)\t") do
        i = i + 1
        local v = field:gsub("\\(.)", { t = "\t", n = "\n", ["\\"] = "\\" })
        if v ~= "" then r[FIELDS[i]] = v end
    end
    r.seconds = tonumber(r.seconds)
    r.fallback = r.fallback == "true"
    return r
end
runner.encode_line, runner.decode_line = encode_line, decode_line

--[[ The command line (scripts/mutate) ]]

local USAGE = [==[
usage: scripts/mutate [--jobs N] [--only ID,...] [--layer NAME] [--no-fallback]
                      [--timeout-scale X] [--list] [--sample N [--seed S]] [--rev REV]
                      [--results FILE] [--batch N]
  --jobs N          mutants run N at a time, each job with its own scratch
                    tree and servers (default 1: the machine is shared)
  --only ID,...     these mutants only (* matches anything: 'keys.*')
  --layer NAME      the mutants of one layer only
  --no-fallback     survivors of their own specs are not run through the
                    whole plain pass
  --timeout-scale X multiplies every time bound (a slow machine)
  --list            where each mutant applies (or why it is stale); runs nothing
  --sample N        N mutants drawn across the layers, as make test does
  --seed S          the sample's seed (default: the time)
  --rev REV         run against the tree of commit REV (git archive) instead
                    of the checkout's files: the catalogue is this checkout's,
                    so a score before new tests can be taken after them
  --results FILE    keep the results in FILE (one line per mutant), and run
                    only the mutants it has no line for: a campaign that was
                    stopped goes on where it was
  --batch N         the survivors of their own specs go through the plain
                    pass N at a time (never two of one file); a batch that
                    fails is run again one mutant at a time: quicker when
                    most survive (a score before new tests, say)]==]

local function parse_args(argv)
    local o = { jobs = 1, fallback = true, timeout_scale = 1 }
    local i = 1
    while i <= #argv do
        local a = argv[i]
        local function value()
            i = i + 1
            if argv[i] == nil then error("scripts/mutate: " .. a .. " needs a value\n" .. USAGE, 0) end
            return argv[i]
        end
        if a == "--jobs" then o.jobs = assert(tonumber(value()), "--jobs N")
        elseif a == "--only" then o.only = value()
        elseif a == "--layer" then o.layer = value()
        elseif a == "--no-fallback" then o.fallback = false
        elseif a == "--timeout-scale" then o.timeout_scale = assert(tonumber(value()))
        elseif a == "--list" then o.list = true
        elseif a == "--sample" then o.sample = assert(tonumber(value()), "--sample N")
        elseif a == "--seed" then o.seed = assert(tonumber(value()), "--seed S")
        elseif a == "--work" then o.work = value()
        elseif a == "--rev" then o.rev = value()
        elseif a == "--results" then o.results = value()
        elseif a == "--batch" then o.batch = assert(tonumber(value()), "--batch N")
        elseif a == "--worker" then o.worker = value()
        elseif a == "--help" or a == "-h" then io.stdout:write(USAGE, "\n") os.exit(0)
        else error("scripts/mutate: unknown argument " .. a .. "\n" .. USAGE, 0) end
        i = i + 1
    end
    return o
end

local function select_mutants(cat, o)
    if o.sample then
        o.seed = o.seed or os.time()
        local picks = runner.sample(cat, o.sample, o.seed, ".", 30)
        return picks
    end
    local out = {}
    for _, m in ipairs(cat.mutants) do
        local keep = (o.layer == nil or m.layer == o.layer)
        if keep and o.only then
            keep = false
            for glob in o.only:gmatch("[^,]+") do
                local pat = glob:gsub("[%^%$%(%)%%%.%[%]%+%-%?]", "%%%0"):gsub("%*", ".*")
                if m.id:match("^" .. pat .. "$") then keep = true end
            end
        end
        if keep then out[#out + 1] = m end
    end
    return out
end

--- One job of a campaign: the mutants k, k + n, ... of `mutants`, each
-- result appended to the results file as it comes (lines this short are
-- appended whole, whichever job writes).
local function run_job(o, mutants, k, n)
    local results_file = o.results
    local c = runner.campaign({ root = ".", work = o.work .. "/job" .. k, rev = o.rev,
        servers = o.work .. "/servers/" .. k, timeout_scale = o.timeout_scale })
    local function record(r)
        local f = assert(io.open(results_file, "a"))
        f:write(encode_line(r), "\n")
        f:close()
        c.log(("   %s: %s"):format(r.id, verdict_text(r)))
    end
    local ok, err = pcall(function()
        assert(c:build(), "the unmutated tree does not build")
        local survivors = {}
        for i = k, #mutants, n do
            local m = mutants[i]
            c.log(("-- %s (%s)"):format(m.id, m.file))
            local r = c:run(m, { fallback = o.fallback and not o.batch })
            if o.batch and o.fallback and r.status == "survived" then
                survivors[#survivors + 1] = { m = m, r = r }
                c.log("   survived its specs: the plain pass comes later, in a batch")
            else
                record(r)
            end
        end
        -- --batch: the survivors of their specs through the plain pass
        -- together, a batch never holding two mutants of one file
        while #survivors > 0 do
            local batch, files, rest = {}, {}, {}
            for _, s in ipairs(survivors) do
                if #batch < o.batch and not files[s.r.file] then
                    batch[#batch + 1], files[s.r.file] = s, true
                else
                    rest[#rest + 1] = s
                end
            end
            survivors = rest
            local ms, ids = {}, {}
            for i, s in ipairs(batch) do ms[i], ids[i] = s.m, s.m.id end
            c.log(("-- the plain pass for %d survivors at once: %s"):format(#ms,
                table.concat(ids, ", ")))
            if c:batch_survives(ms) then
                for _, s in ipairs(batch) do
                    s.r.note = ("the plain pass too, in a batch of %d%s"):format(#batch,
                        s.r.note and ("; " .. s.r.note) or "")
                    record(s.r)
                end
            else
                c.log("   the batch failed: each of them alone")
                for _, s in ipairs(batch) do record(c:run(s.m, { fallback = true })) end
            end
        end
    end)
    for test in pairs(c.unconfirmed) do
        local f = assert(io.open(o.work .. "/unconfirmed." .. k, "a"))
        f:write(test, "\n")
        f:close()
    end
    c:close()
    if not ok then error(err, 0) end
end

function runner.main(argv)
    local o = parse_args(argv)
    local cat = runner.load_catalogue(".")
    local mutants = select_mutants(cat, o)
    if o.list then
        -- equivalent mutants are located too: their reason is about code
        -- that must still be there
        local stale, moved_n, equivalent = 0, 0, 0
        for _, m in ipairs(mutants) do
            local file, why, _, moved = runner.locate(".", m)
            if not file then stale = stale + 1 elseif moved then moved_n = moved_n + 1 end
            if m.equivalent then equivalent = equivalent + 1 end
            io.stdout:write(("%-34s %-9s %s\n"):format(m.id, m.layer,
                not file and ("STALE: " .. why)
                or m.equivalent and ("equivalent: " .. m.equivalent)
                or (file .. (moved and (" (" .. moved .. ")") or ""))))
        end
        io.stdout:write(("%d mutants (%d equivalent): %d stale, %d moved (their `file` wants "
            .. "updating)\n"):format(#mutants, equivalent, stale, moved_n))
        return (stale > 0 or moved_n > 0) and 1 or 0
    end
    assert(o.work, "scripts/mutate sets --work")
    o.results = o.results or (o.work .. "/results")
    local function results_by_id()
        local by_id = {}
        for line in (read(o.results) or ""):gmatch("[^\n]+") do
            local r = decode_line(line)
            by_id[r.id] = r
        end
        return by_id
    end
    if o.worker then                         -- one job of a campaign with --jobs
        local k, n = o.worker:match("^(%d+)/(%d+)$")
        local todo, wanted = {}, {}
        for id in (read(o.work .. "/todo") or ""):gmatch("[^\n]+") do wanted[id] = true end
        for _, m in ipairs(mutants) do
            if wanted[m.id] then todo[#todo + 1] = m end
        end
        run_job(o, todo, tonumber(k), tonumber(n))
        return 0
    end
    local started = now()
    local done, todo = results_by_id(), {}
    for _, m in ipairs(mutants) do
        if not done[m.id] then todo[#todo + 1] = m end
    end
    io.stdout:write(("mutation campaign: %d mutants, %d job(s), fallback to the plain pass: %s%s%s\n")
        :format(#todo, o.jobs, o.fallback and "yes" or "no",
            o.seed and (", sample seed " .. o.seed) or "", o.rev and (", tree of " .. o.rev) or ""))
    if #todo < #mutants then
        io.stdout:write(("(%d more have their result in %s already)\n"):format(#mutants - #todo,
            o.results))
    end
    io.stdout:flush()
    local jobs = math.max(1, math.min(o.jobs, #todo))
    if #todo == 0 then
        jobs = 0
    elseif jobs == 1 then
        run_job(o, todo, 1, 1)
    else
        local ids = {}
        for i, m in ipairs(todo) do ids[i] = m.id end
        write(o.work .. "/todo", table.concat(ids, "\n") .. "\n")
        local forwarded = {}
        for _, a in ipairs(argv) do forwarded[#forwarded + 1] = q(a) end
        if o.sample then            -- the workers must draw the same sample
            forwarded[#forwarded + 1] = "--seed " .. o.seed
        end
        for k = 1, jobs do
            sh(("(%s spec/mutants/runner.lua %s --worker %d/%d > %s/job%d.log 2>&1; "
                .. "echo $? > %s/done.%d) &"):format(LUA, table.concat(forwarded, " "), k, jobs,
                q(o.work), k, q(o.work), k))
        end
        io.stdout:write(("(each job logs to %s/jobN.log)\n"):format(o.work))
        io.stdout:flush()
        local printed = {}
        for id in pairs(done) do printed[id] = true end
        while true do
            local finished = 0
            for k = 1, jobs do
                if read(("%s/done.%d"):format(o.work, k)) then finished = finished + 1 end
            end
            for id, r in pairs(results_by_id()) do
                if not printed[id] then
                    printed[id] = true
                    io.stdout:write(("%s: %s\n"):format(r.id, verdict_text(r)))
                    io.stdout:flush()
                end
            end
            if finished == jobs then break end
            sh("sleep 2")
        end
    end
    -- the table, in catalogue order
    local by_id = results_by_id()
    local results = {}
    for _, m in ipairs(mutants) do results[#results + 1] = by_id[m.id] end
    local report = {}
    report[#report + 1] = ""
    report[#report + 1] = runner.table(results)
    report[#report + 1] = ""
    local score, n = runner.score(results)
    report[#report + 1] = score
    if #results < #mutants then
        report[#report + 1] = ("(%d mutants have no result: a job failed; see its log)")
            :format(#mutants - #results)
    end
    local unconfirmed = {}
    for k = 1, jobs do
        for line in (read(("%s/unconfirmed.%d"):format(o.work, k)) or ""):gmatch("[^\n]+") do
            unconfirmed[#unconfirmed + 1] = line
        end
    end
    if #unconfirmed > 0 then
        report[#report + 1] = "tests whose failure was not confirmed (not counted as kills):"
        for _, line in ipairs(unconfirmed) do report[#report + 1] = "  " .. line end
    end
    report[#report + 1] = ("run time: %.0f s; commit %s%s"):format(now() - started,
        capture("git rev-parse --short " .. q(o.rev or "HEAD") .. " 2>/dev/null"):gsub("%s+$", ""),
        o.rev and "" or (sh("git diff --quiet HEAD 2>/dev/null") ~= 0 and " (with changes)" or ""))
    local text = table.concat(report, "\n") .. "\n"
    io.stdout:write(text)
    sh("mkdir -p build/mutate")
    local f = io.open("build/mutate/last-run.txt", "w")
    if f then
        f:write(text)
        f:close()
    end
    return (n.survived == 0 and #results == #mutants) and 0 or 1
end

if arg and arg[0] and arg[0]:match("runner%.lua$") then
    os.exit(runner.main(arg))
end

return runner
