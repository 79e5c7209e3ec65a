--- The RavenDB backend: the /databases/{db}/cmpxchg protocol over a
-- transport (libcurl in plain Lua, cosockets in nginx), with the topology,
-- failover and raft-request-id handling of the official clients. Wire
-- details and their sources: doc/ravendb-protocol.md (§ below).
--
-- It implements the backend interface described in embedded.lua.
local check = require "cmpxchg.check"
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"
local cluster = require "cmpxchg.cluster"
local runtime = require "cmpxchg.runtime"

local tointeger = check.tointeger
local json_fields, json_texts = core.json_fields, core.json_texts
local fail, snippet = check.fail, check.snippet

local RavenDB = {}
RavenDB.__index = RavenDB

-- seconds a whole call may take, over every node it tries: longer than the
-- server's own wait for a Raft leader (Cluster.OperationTimeoutInSec, 15 s),
-- so that its 408 arrives before we give up (server behaviour §1 #2)
local DEFAULT_TIMEOUT = 20
RavenDB.default_timeout = DEFAULT_TIMEOUT   -- what the renewal thread caps per turn
local TOPOLOGY_PERIOD = 60      -- seconds between topology re-reads, as the Node client's timer
local LIST_PAGE = 1024          -- items per page when listing everything
local MAX_QUERY = 12000         -- bytes of key= parameters per GET (Kestrel caps lines at 16 KB)

-- Raven-Client-Version on every request: the server reads it as a System.Version,
-- and one below 5.2 (or none) silently turns a cluster-wide transaction's atomic
-- guards off (server behaviour §1 #6). This client speaks the 5.4 protocol.
local CLIENT_VERSION = "5.4.0"

-- the only reply headers read here (§6.3, §7.2)
local REPLY_HEADERS = { "refresh-topology", "database-missing" }

-- statuses after which another node may succeed (§6.3)
local FAILOVER = { [408] = true, [410] = true, [425] = true, [502] = true, [503] = true,
                   [504] = true }

--- RFC 3986 percent-encoding of everything but the unreserved set, so that
-- "+" and "/" survive ASP.NET's query decoding (§1.1).
local escape = core.url_escape

local MAX_NODES = 64             -- nodes a topology may list (each request may try them all)

--- An index of a reply: a JSON number with an integer value (a string,
-- "5", is not one, whatever Lua would convert); nil otherwise.
local function index_of(v)
    return type(v) == "number" and tointeger(v) or nil
end

--- Reads a JSON reply; a body that is not what RavenDB sends is a decode error.
local function decode_reply(body, what)
    local value, err = json.decode(body)
    if type(value) ~= "table" then
        return fail("decode", "%s: the server's reply is not a JSON object (%s): %s",
            what, err or type(value), snippet(body))
    end
    return value
end

--- A RavenDB error reply ({"Type": ..., "Message": ...}) as readable text.
local function error_text(status, body)
    local reply = json.decode(body or "")
    if type(reply) == "table" and type(reply.Message) == "string" then
        local kind = type(reply.Type) == "string" and reply.Type:match("[%w_]+$") or "Error"
        return ("HTTP %d %s: %s"):format(status, kind, check.printable(reply.Message)), reply.Type
    end
    return ("HTTP %d: %s"):format(status, snippet(body or "")), nil
end

--- The user's value inside a stored item: the "Object" member, or the whole
-- item without its metadata when it was written without the wrapper (§2.2).
local function unwrap(item)
    if type(item) ~= "table" then return item end
    if item.Object ~= nil then return item.Object end
    local copy = {}
    for k, v in pairs(item) do
        if k ~= "@metadata" then copy[k] = v end
    end
    return copy
end

--- The value of a GET result item (JSON null: no value).
local function item_value(item)
    local value = item.Value
    if value == json.null then return nil end
    return unwrap(value)        -- may be false: no `and/or` here
end

--- The user's value inside the JSON text of a stored item (nil: none).
local function item_text_value(text, what)
    if text == nil or text == "null" then return nil end
    local item, err = json.decode(text)
    if item == nil then return fail("decode", "%s: bad value (%s)", what, err) end
    return unwrap(item)
end

--- Parses a put/delete reply {Index, Successful, Value} (§2.2, §4), picking
-- out its fields: the value it echoes is decoded only when it is returned.
local function write_result(body, what)
    local valid, index, successful = json_fields(body, "Index", "Successful")
    if not valid then
        return fail("decode", "%s: the server's reply is not JSON: %s", what, snippet(body))
    end
    index = index_of(index)
    if index == nil or type(successful) ~= "boolean" then
        return fail("decode", "%s: reply without Index/Successful: %s", what, snippet(body))
    end
    -- a write that succeeded has a new index; a failed one the current one (0: absent)
    if index < 0 or (successful and index == 0) then
        return fail("decode", "%s: reply with Index %d: %s", what, index, snippet(body))
    end
    local is_delete = what == "delete"
    if successful and not is_delete then return true, index, nil end
    if not successful and index == 0 then return false, 0, nil end  -- absent (§2.2, PR 18822)
    local _, text = json_texts(body, "Value")
    local value, err, code = item_text_value(text, what)
    if code then return nil, err, code end
    if not successful then return false, index, value end
    -- servers before PR 21644 report deleting an absent key as a success
    -- with no value: it was absent, as newer servers say (§4)
    if value == nil then return false, 0, nil end
    return true, index, value
end

-- the options of cmpxchg.open a RavenDB store reads
local OPTIONS = { database = "string", timeout = "number", tls = "table" }
RavenDB.OPTIONS = OPTIONS

local function check_options(opts)
    check.options(opts, OPTIONS, 2, "open")
    if type(opts.database) ~= "string" or opts.database == "" then
        check.argerror(2, "open", "option 'database' (the RavenDB database name) is required")
    elseif opts.database:find("[^%w%-%._]") then
        check.argerror(2, "open", "database names hold only letters, digits, '-', '_' and '.'")
    end
    if opts.timeout ~= nil then check.seconds(opts.timeout, "timeout", 2, "open") end
    cluster.check_tls(opts.tls)
end

--- Opens a RavenDB store. `urls`: an array of node URLs (cluster seeds);
-- opts: database (required), timeout, tls; `transports` (tests): a factory
-- new(opts) -> object with request(method, url, body, headers, timeout), by
-- default the runtime's.
function RavenDB.open(urls, opts, transports)
    check_options(opts)
    local self = setmetatable({
        database = opts.database,
        timeout = opts.timeout or DEFAULT_TIMEOUT,
        transports = transports or runtime.transport(),
        transport_opts = { tls = opts.tls, connect_timeout = math.min(opts.timeout or 5, 5),
                           reply_headers = REPLY_HEADERS, refuses_in_tls = false },
        connections = {},       -- url -> transport: one kept-alive connection per node
        seeds = {},             -- the URLs given: asked for the topology when nothing else answers
        nodes = {},             -- {url =, tag =, role =}: the members, then the nodes in rehab
        members = 0,            -- how many of `nodes` are members
        preferred = 1,          -- the member requests go to first
        topology_etag = -1,
        topology_due = math.huge,
        -- the seeds' scheme: a topology's nodes of another are not used
        scheme = urls[1]:match("^(%a+)://"):lower(),
    }, RavenDB)
    for i, url in ipairs(urls) do
        url = url:gsub("/+$", "")
        self.seeds[i] = url
        self.nodes[i] = { url = url, tag = "?", role = "Member" }
    end
    self.members = #self.nodes
    local ok, err, code = self:first_topology()
    if not ok then
        self:close()
        return nil, err, code
    end
    return self
end

function RavenDB:describe()
    local urls = {}
    for i, node in ipairs(self.nodes) do urls[i] = check.shown_url(node.url) end
    return ("ravendb %s/%s"):format(table.concat(urls, ","), self.database)
end

RavenDB.connection = cluster.connection

--- The request headers, two tables (with and without a body) made once per
-- topology: transports only read them.
function RavenDB:headers(with_body)
    local cache = self.headers_cache
    if cache == nil or cache.etag ~= self.topology_etag then
        local etag = ('"%d"'):format(self.topology_etag)
        cache = { etag = self.topology_etag,
                  plain = { ["Topology-Etag"] = etag, ["Raven-Client-Version"] = CLIENT_VERSION },
                  json = { ["Topology-Etag"] = etag, ["Raven-Client-Version"] = CLIENT_VERSION,
                           ["Content-Type"] = "application/json" } }
        self.headers_cache = cache
    end
    return with_body and cache.json or cache.plain
end

--- GET /topology?name=db from node `url` (§6.1): the decoded reply, or nil,
-- err, code, final (final: an answer every node would give: 403, or an
-- unknown database).
function RavenDB:fetch_topology(url, timeout)
    local status, body, headers = self:connection(url):request("GET",
        ("%s/topology?name=%s"):format(url, escape(self.database)), nil, self:headers(),
        timeout)
    if status == 200 then return decode_reply(body, "topology") end
    if status == nil then return nil, body, headers end
    local err, code = self:status_error(status, body, headers)
    return nil, err, code, not FAILOVER[status] or headers["database-missing"] ~= nil
end

--- The first topology, from the seeds in turn, as the official clients'
-- first topology update does (§6.1); stops at once on an answer every node
-- would give (403, unknown database).
function RavenDB:first_topology()
    local last_err, last_code
    for _, url in ipairs(self.seeds) do
        local reply, err, code, final = self:fetch_topology(url, self.timeout)
        if reply then return self:set_topology(reply) end
        if final then return nil, err, code end
        last_err, last_code = err, code
    end
    return nil, last_err, last_code
end

--- Every URL we know of, in the order requests try them, then the seeds
-- that are not in the topology.
function RavenDB:known_urls()
    local urls, seen = {}, {}
    for _, i in ipairs(self:in_order()) do
        urls[#urls + 1] = self.nodes[i].url
        seen[self.nodes[i].url] = true
    end
    for _, url in ipairs(self.seeds) do
        if not seen[url] then urls[#urls + 1] = url end
    end
    return urls
end

--[[ Reads the topology again from the nodes we know, before `deadline`
(monotonic), and takes it only when its Etag is newer than the one held: a
node that lags behind the cluster serves an older topology, and the official
clients ignore an Etag they have seen (server behaviour §1 #9). With `all`
(a 410 and no answer: the database moved off the nodes we know) every node is
asked and the newest answer is taken, the same Etag too; otherwise the first
newer one. Returns true when a topology was taken. ]]
function RavenDB:update_topology(deadline, all)
    self.topology_due = runtime.monotime() + TOPOLOGY_PERIOD
    local best, best_etag
    for _, url in ipairs(self:known_urls()) do
        local left = deadline - runtime.monotime()
        if left <= 0 then break end
        local reply = self:fetch_topology(url, left)
        local etag = reply and index_of(reply.Etag)
        if etag and (best == nil or etag > best_etag) then best, best_etag = reply, etag end
        if best and not all and best_etag > self.topology_etag then break end
    end
    if best == nil or best_etag < self.topology_etag or
            (best_etag == self.topology_etag and not all) then
        return false
    end
    return self:set_topology(best) == true
end

--- Takes a topology reply: its nodes, members first and the nodes in rehab
-- last, as the server lists them and the official clients prefer them
-- (§6.1; server behaviour §1 #9). Requests start again from its first
-- member, as the official clients' new NodeSelector state does. The nodes are
-- checked before anything changes: each Url must be a plain
-- scheme://host[:port] (it goes into request lines), and only nodes of the
-- seeds' scheme are used, so an https seed never sends values in plain text
-- to the http nodes of a foreign topology.
function RavenDB:set_topology(reply)
    if not cluster.is_array(reply.Nodes) or #reply.Nodes == 0 then
        return fail("decode", "topology without nodes")
    elseif #reply.Nodes > MAX_NODES then
        return fail("decode", "topology of %d nodes (at most %d)", #reply.Nodes, MAX_NODES)
    end
    local members, rehabs = {}, {}
    for i, n in ipairs(reply.Nodes) do
        if type(n) ~= "table" or type(n.Url) ~= "string" then
            return fail("decode", "topology node %d has no Url", i)
        end
        local url = cluster.node_url(n.Url)
        if not url then
            return fail("decode", "topology node %d has a Url that is not scheme://host:port: %s",
                i, snippet(n.Url))
        end
        if url:match("^(%a+)"):lower() == self.scheme then
            local node = { url = url, tag = tostring(n.ClusterTag or "?"),
                           role = n.ServerRole == "Rehab" and "Rehab" or "Member" }
            local list = node.role == "Member" and members or rehabs
            list[#list + 1] = node
        end
    end
    if #members + #rehabs == 0 then
        return fail("decode", "the topology has no %s node (a foreign topology?)", self.scheme)
    end
    self.nodes, self.members, self.preferred = members, #members, 1
    for _, node in ipairs(rehabs) do self.nodes[#self.nodes + 1] = node end
    self.topology_etag = index_of(reply.Etag) or -1
    self.topology_due = runtime.monotime() + TOPOLOGY_PERIOD
    -- close connections to nodes that left the topology
    local keep = {}
    for _, n in ipairs(self.nodes) do keep[n.url] = true end
    for url, c in pairs(self.connections) do
        if not keep[url] then
            c:close()
            self.connections[url] = nil
        end
    end
    return true
end

--- Maps an answered HTTP error to the contract: err, code.
function RavenDB:status_error(status, body, headers)
    local text, kind = error_text(status, body)
    if (headers and headers["database-missing"]) or
            (kind and kind:find("DatabaseDoesNotExistException", 1, true)) then
        return ("not_found: database '%s' does not exist (%s)"):format(self.database, text),
            "not_found"
    elseif status == 401 or status == 403 then
        return "auth: " .. text, "auth"
    elseif status == 408 then
        return "timeout: " .. text, "timeout"
    end
    return "http: " .. text, "http"
end

--- The positions in `nodes` in the order a request tries them: from the
-- preferred member round the members, then the nodes in rehab.
function RavenDB:in_order()
    local order = cluster.from(self.preferred, self.members)
    for i = self.members + 1, #self.nodes do order[#order + 1] = i end
    return order
end

--[[ One round of a request over the nodes, in order, until `deadline`
(monotonic): each node once (a lone node twice). Connection errors, TLS
errors (RavenDB refuses certificates with a 403, never inside TLS, so a TLS
failure is one node's trouble: server behaviour §1 #4), timeouts and the
FAILOVER statuses move on to the next node. Returns status, body, headers of
an answer that is not one of those, or nil, err, code, gone (gone: a node
answered 410, so the topology held is out of date). ]]
function RavenDB:round(method, path, body, headers, deadline)
    local no_leader, tried, gone = nil, 0, 0
    local last_err, last_code
    local status, rbody, rheaders = cluster.try_in_turn(self:in_order(), function(i)
        local left = deadline - runtime.monotime()
        if left < 0.01 then return "final" end      -- no time for another node
        local node = self.nodes[i]
        local st, text, headers_or_code = self:connection(node.url):request(method,
            node.url .. path, body, headers, left)
        tried = tried + 1
        if st ~= nil and not (FAILOVER[st] and not (headers_or_code or {})["database-missing"]) then
            if i <= self.members then self.preferred = i end
            return "answer", st, text, headers_or_code
        end
        if i == self.preferred then        -- the next call starts past a failed node
            self.preferred = self.members > 0 and i % self.members + 1 or 1
        end
        if st == nil then
            last_err, last_code = text, headers_or_code
        else
            last_err, last_code = self:status_error(st, text, headers_or_code)
            if st == 410 then gone = gone + 1 end
            if st == 408 then no_leader = last_err end
        end
        return "next"
    end)
    if status ~= nil then return status, rbody, rheaders end
    if tried == 0 then
        return nil, ("timeout: %s %s: no time left of the call's %g s"):format(method,
            path, self.timeout), "timeout"
    end
    -- the server's own "no leader" says more than our timeout cutting the next try
    if last_code == "timeout" and no_leader then last_err = no_leader end
    return nil, last_err, last_code, gone > 0
end

--[[ Sends one logical request: `path` is appended to a node URL. The whole
call, every node it tries included, takes at most the store's timeout. Writes
carry one raft-request-id (`write_id`, else a new one) for all their attempts,
so a write that reached the server before its reply was lost is applied once
(§6.4). When no node took the request and one of them answered 410, the
database has moved off the nodes we know: the topology is read again from
every node we know of and the request makes one more round, as the C# and
Java clients do once every node failed (server behaviour §1 #1).
After an answer, the topology is read again when the server says it changed
(Refresh-Topology) or TOPOLOGY_PERIOD has passed since the last reading.
Returns status, body, headers of an answer that is not a failover case. ]]
function RavenDB:send(method, path, body, is_write, write_id)
    local deadline = runtime.monotime() + self.timeout
    if is_write then
        path = path .. "&raft-request-id=" .. (write_id or runtime.uuid())
    end
    local status, rbody, rheaders, gone = self:round(method, path, body,
        self:headers(body ~= nil), deadline)
    if status == nil and gone and self:update_topology(deadline, true) then
        status, rbody, rheaders = self:round(method, path, body, self:headers(body ~= nil),
            deadline)
    end
    if status ~= nil and ((rheaders and rheaders["refresh-topology"] == "true") or
            runtime.monotime() >= self.topology_due) then
        self:update_topology(deadline)      -- best effort: the answer stands either way
    end
    return status, rbody, rheaders
end

function RavenDB:cmpxchg_path(query)
    return "/databases/" .. self.database .. "/cmpxchg?" .. query
end

--- Runs a request whose answer must be 200: its body.
function RavenDB:call(method, query, body, is_write, write_id)
    local status, rbody, headers = self:send(method, self:cmpxchg_path(query), body, is_write,
        write_id)
    if status == nil then return nil, rbody, headers end
    if status ~= 200 then
        local err, code = self:status_error(status, rbody, headers)
        return nil, err, code
    end
    return rbody
end

-- A write sent again with its write id (the raft-request-id) is applied at
-- most once, and answered as it was the first time (§6.4): lease.lua settles
-- unknown outcomes by sending them again rather than by reading back, which a
-- lagging node could answer with the state before the write.
RavenDB.write_ids = true

function RavenDB:put(key, text, index, expires, write_id)
    local body
    if expires then
        body = ('{"Object":%s,"@metadata":{"@expires":"%s"}}'):format(text,
            core.format_time(expires))
    else
        body = '{"Object":' .. text .. "}"
    end
    local reply, err, code = self:call("PUT", ("key=%s&index=%d"):format(escape(key), index),
        body, true, write_id)
    if not reply then return nil, err, code end
    return write_result(reply, "put")
end

function RavenDB:delete(key, index, write_id)
    local reply, err, code = self:call("DELETE",
        ("key=%s&index=%d"):format(escape(key), index), nil, true, write_id)
    if not reply then return nil, err, code end
    return write_result(reply, "delete")
end

--- The items of a GET reply: {Results = [{Key, Value, Index}]} (§3.2). An
-- index is an integer, -1 for a missing key (§3.3), else positive in a
-- prefix listing (`listing`) and not negative in a GET by keys.
local function results_of(reply, listing)
    if not cluster.is_array(reply.Results) then
        return fail("decode", "reply without Results")
    end
    for _, item in ipairs(reply.Results) do
        local index = type(item) == "table" and index_of(item.Index)
        if not index or type(item.Key) ~= "string" or
                (listing and index <= 0) or (not listing and index < -1) then
            return fail("decode", "malformed item in Results: %s", snippet(json.encode(item)))
        end
    end
    return reply.Results
end

--- Whether the Results of reply `body` hold more than `n` items: told before
-- decoding, so a reply of millions of tiny items is refused as it is.
local function more_results_than(body, n)
    local valid, extra = json_texts(body, "Results." .. n)
    return valid and extra ~= nil
end

--- The items of a GET by keys (`query`: key=...&key=..., `nkeys` of them):
-- its Results, or none when the only key asked for is missing (a 404, §3.3).
function RavenDB:get_results(query, nkeys)
    local status, body, headers = self:send("GET", self:cmpxchg_path(query))
    if status == nil then return nil, body, headers end
    if status == 404 and nkeys == 1 and not (headers or {})["database-missing"] then
        return {}
    elseif status ~= 200 then
        local err, code = self:status_error(status, body, headers)
        return nil, err, code
    end
    if more_results_than(body, nkeys) then
        return fail("decode", "get: more results than keys asked for")
    end
    local reply, err, code = decode_reply(body, "get")
    if not reply then return nil, err, code end
    return results_of(reply)
end

--- GET by keys, in one request for up to MAX_QUERY bytes of keys: adds
-- {index =, value =} per folded key to `found`.
function RavenDB:get_keys(keys, found)
    local query = {}
    for i, key in ipairs(keys) do query[i] = "key=" .. escape(key) end
    local results, err, code = self:get_results(table.concat(query, "&"), #keys)
    if not results then return nil, err, code end
    for _, item in ipairs(results) do
        local index = index_of(item.Index)
        if index > 0 then
            found[core.fold_key(item.Key) or item.Key] = { index = index, value = item_value(item) }
        end
    end
    return found
end

function RavenDB:get(key)
    local results, err, code = self:get_results("key=" .. escape(key), 1)
    if not results then return nil, err, code end
    local folded = core.fold_key(key)
    for _, item in ipairs(results) do
        local index = index_of(item.Index)
        if index > 0 and core.fold_key(item.Key) == folded then
            return index, item_value(item)
        end
    end
    return 0, nil
end

function RavenDB:get_many(keys)
    local found, batch, size = {}, {}, 0
    local err, code
    for i = 1, #keys + 1 do
        local key = keys[i]
        local cost = key and #escape(key) + 5 or math.huge
        if #batch > 0 and (key == nil or size + cost > MAX_QUERY) then
            found, err, code = self:get_keys(batch, found)
            if not found then return nil, err, code end
            batch, size = {}, 0
        end
        if key then
            batch[#batch + 1] = key
            size = size + cost
        end
    end
    local results = {}
    for i, key in ipairs(keys) do
        results[i] = found[core.fold_key(key)] or { index = 0 }
    end
    return results
end

--- One page of a prefix listing (§3.1): startsWith, start, pageSize; a
-- page of more items than asked for is a decode error.
function RavenDB:list_page(prefix, start, page_size)
    local body, err, code = self:call("GET", ("startsWith=%s&start=%d&pageSize=%d")
        :format(escape(prefix), start, page_size))
    if not body then return nil, err, code end
    if more_results_than(body, page_size) then
        return fail("decode", "list: a page of more than the %d items asked for", page_size)
    end
    local reply
    reply, err, code = decode_reply(body, "list")
    if not reply then return nil, err, code end
    local results
    results, err, code = results_of(reply, true)
    if not results then return nil, err, code end
    local items = {}
    for i, item in ipairs(results) do
        items[i] = { key = item.Key, index = index_of(item.Index), value = item_value(item) }
    end
    return items
end

local GUARD = "rvn-atomic/"

--- Whether `s` is white space only, as .NET's char.IsWhiteSpace counts it
-- (U+0009-U+000D, U+0085, and the Unicode space, line and paragraph
-- separators): string.IsNullOrWhiteSpace, with which the server reads its
-- query string (server behaviour §1 #5, #13). csrc/cmpxchg_core.c's key check
-- uses the same set.
local function blank(s)
    s = s:gsub("[\t-\r ]", ""):gsub("\194[\133\160]", ""):gsub("\225\154\128", "")
        :gsub("\226\128[\128-\138\168\169\175]", ""):gsub("\226\129\159", "")
        :gsub("\227\128\128", "")
    return s == ""
end

--- Lists a prefix. RavenDB counts its atomic guards in start/pageSize; when
-- the prefix can match them, pages are read from the start and the guards
-- skipped here, so start and page_size count only the items we return. A
-- prefix of white space only is no prefix to the server, which then lists
-- the whole database: such a prefix is applied here, to everything.
-- Pages go by offset: an item written meanwhile before the offset shifts
-- the next page, whose first items were then seen already and are left out;
-- a full page with nothing new is a server that makes no progress (decode),
-- and a listing ends after cluster.MAX_LIST_ITEMS items.
function RavenDB:list(prefix, start, page_size)
    local lower = core.fold_key(prefix)
    if lower:sub(1, #GUARD) == GUARD then return {} end     -- nothing but guards there
    local spaces = prefix ~= "" and blank(prefix)
    local guards_possible = spaces or GUARD:sub(1, #lower) == lower
    if not guards_possible and page_size then
        return self:list_page(prefix, start, page_size)
    end
    local asked = spaces and "" or prefix
    local out, skipped, offset = {}, 0, guards_possible and 0 or start
    local seen, read = {}, 0
    while true do
        local page, err, code = self:list_page(asked, offset, LIST_PAGE)
        if not page then return nil, err, code end
        local new = 0
        for _, item in ipairs(page) do
            local folded = core.fold_key(item.key) or item.key
            if not seen[folded] then
                seen[folded] = true
                new = new + 1
                if folded:sub(1, #GUARD) ~= GUARD and
                        (not spaces or folded:sub(1, #lower) == lower) then
                    if guards_possible and skipped < start then
                        skipped = skipped + 1
                    else
                        out[#out + 1] = item
                        if page_size and #out >= page_size then return out end
                    end
                end
            end
        end
        if #page < LIST_PAGE then return out end
        if new == 0 then
            return fail("decode", "list: the server's pages of '%s' make no progress (offset %d)",
                prefix, offset)
        end
        offset = offset + #page
        read = read + #page
        if read > cluster.MAX_LIST_ITEMS then return cluster.too_many(prefix) end
    end
end

--[[ Cluster-wide transactions, documents and queries (server behaviour §3) ]]

-- Cluster.MaxSizeOfSingleRaftCommandInMb: a transaction is one Raft command
local MAX_RAFT_COMMAND = 128 * 1024 * 1024

RavenDB.txn_limits = {
    bytes = MAX_RAFT_COMMAND,
    bytes_why = "a RavenDB cluster-wide transaction is one Raft command of at most 128 MiB "
        .. "(Cluster.MaxSizeOfSingleRaftCommandInMb, its default)",
    documents = true,
}
RavenDB.documents = true

--- The bulk_docs command of one prepared operation (§3.1).
local function command_of(op)
    local kind = op.kind
    if kind == "put" then
        local document
        if op.expires then
            document = ('{"Object":%s,"@metadata":{"@expires":"%s"}}'):format(op.text,
                core.format_time(op.expires))
        else
            document = '{"Object":' .. op.text .. "}"
        end
        return ('{"Id":%s,"Document":%s,"Index":%d,"Type":"CompareExchangePUT"}')
            :format(json.encode(op.key), document, op.index)
    elseif kind == "delete" then
        return ('{"Id":%s,"Index":%d,"Type":"CompareExchangeDELETE"}')
            :format(json.encode(op.key), op.index)
    end
    -- documents: the change vector read is the guard's index (OriginalChangeVector); a
    -- ChangeVector, optimistic concurrency, is not supported in a cluster transaction
    local cv = op.change_vector and json.encode(op.change_vector) or "null"
    if kind == "put_document" then
        return ('{"Id":%s,"ChangeVector":null,"OriginalChangeVector":%s,"Document":%s,'
            .. '"Type":"PUT"}'):format(json.encode(op.id), cv, op.text)
    end
    return ('{"Id":%s,"ChangeVector":null,"OriginalChangeVector":%s,"Type":"DELETE"}')
        :format(json.encode(op.id), cv)
end

--- The violations of a ClusterTransactionConcurrencyException: its
-- ConcurrencyViolations when the body has them, else its message's lines
-- "Concurrency check failed for putting|deleting the key 'K'. Requested
-- index: N, actual index: M" (S-CTX GenerateErrorInfo): {id =, actual =}.
local function violations_of(reply)
    local out = {}
    if type(reply.ConcurrencyViolations) == "table" then
        for _, v in ipairs(reply.ConcurrencyViolations) do
            if type(v) ~= "table" or type(v.Id) ~= "string" or not tointeger(v.Actual) then
                return nil
            end
            out[#out + 1] = { id = v.Id, actual = tointeger(v.Actual) }
        end
        return out
    end
    local message = type(reply.Message) == "string" and reply.Message or ""
    for key, actual in message:gmatch("Concurrency check failed for %a+ the key '(.-)'%. "
            .. "Requested index: %-?%d+, actual index: (%-?%d+)") do
        out[#out + 1] = { id = key, actual = tointeger(tonumber(actual)) }
    end
    return out
end

--[[ The conflicts of a refused transaction, in the order of `ops`: for an
item, the index the server reported (0: absent), and its value when a read
right after finds the item still at that index. The refusal's indexes are one
state of the cluster, the moment the transaction was refused; a read is later,
so a value is taken only where it is of that state: an item changed since (or
read from a node that has not caught up) is reported with its index and no
value. A guard's violation is its document's: {id =}. ]]
function RavenDB:conflicts_of(ops, reply)
    local violations = violations_of(reply)
    if violations == nil or #violations == 0 then return nil end
    local by_key = {}
    for _, v in ipairs(violations) do
        local folded = core.fold_key(v.id)
        if folded then by_key[folded] = math.max(v.actual, 0) end
    end
    local conflicts, keys = {}, {}
    for _, op in ipairs(ops) do
        if op.key then
            local actual = by_key[core.fold_key(op.key)]
            if actual then
                conflicts[#conflicts + 1] = { key = op.key, index = actual, op = op }
                keys[#keys + 1] = op.key
            end
        elseif by_key[core.fold_key(GUARD .. op.id) or ""] then
            conflicts[#conflicts + 1] = { id = op.id }
        end
    end
    if #conflicts == 0 then return nil end
    local read = #keys > 0 and self:get_many(keys) or nil
    local n = 0
    for _, c in ipairs(conflicts) do
        if c.key then
            n = n + 1
            local r = read and read[n]
            if r and c.index > 0 and r.index == c.index then c.value = r.value end
            c.op = nil
        end
    end
    return conflicts
end

--- POST bulk_docs with TransactionMode ClusterWide: 201 {Results, TransactionIndex}
-- or 409 ClusterTransactionConcurrencyException (§3.1). The body names Commands
-- first and TransactionMode right after, as the server's parser wants.
function RavenDB:transaction(ops, write_id)
    local commands = {}
    for i, op in ipairs(ops) do commands[i] = command_of(op) end
    local body = ('{"Commands":[%s],"TransactionMode":"ClusterWide"}')
        :format(table.concat(commands, ","))
    local status, rbody, headers = self:send("POST", "/databases/" .. self.database
        .. "/bulk_docs?", body, true, write_id)
    if status == nil then return nil, rbody, headers end
    if status == 201 or status == 200 then
        local reply, err, code = decode_reply(rbody, "transaction")
        if not reply then return nil, err, code end
        local index = tointeger(reply.TransactionIndex)
        if not index or index <= 0 or type(reply.Results) ~= "table" then
            return fail("decode", "transaction: reply without TransactionIndex/Results: %s",
                snippet(rbody))
        end
        local change_vectors
        for _, r in ipairs(reply.Results) do
            if type(r) == "table" and r.Type == "PUT" and type(r["@id"]) == "string"
                    and type(r["@change-vector"]) == "string" then
                change_vectors = change_vectors or {}
                change_vectors[r["@id"]] = r["@change-vector"]
            end
        end
        return true, index, change_vectors
    end
    local err, code = self:status_error(status, rbody, headers)
    if status == 409 then
        local reply = json.decode(rbody)
        if type(reply) == "table" and type(reply.Type) == "string"
                and reply.Type:find("ClusterTransactionConcurrencyException", 1, true) then
            local conflicts = self:conflicts_of(ops, reply)
            if conflicts then return false, conflicts end
            return fail("decode", "transaction: a concurrency error that names none of its "
                .. "keys: %s", snippet(rbody))
        end
    end
    return nil, err, code
end

--- GET /docs?id= (§3.2): the document and its change vector; nil when absent.
function RavenDB:get_document(id)
    local status, body, headers = self:send("GET", ("/databases/%s/docs?id=%s")
        :format(self.database, escape(id)))
    if status == nil then return nil, body, headers end
    if status == 404 and not (headers or {})["database-missing"] then return nil end
    if status ~= 200 then
        local err, code = self:status_error(status, body, headers)
        return nil, err, code
    end
    local reply, err, code = decode_reply(body, "get_document")
    if not reply then return nil, err, code end
    local doc = type(reply.Results) == "table" and reply.Results[1]
    if doc == json.null then return nil end
    local metadata = type(doc) == "table" and doc["@metadata"]
    if type(metadata) ~= "table" or type(metadata["@change-vector"]) ~= "string" then
        return fail("decode", "get_document: a document without @metadata.@change-vector: %s",
            snippet(body))
    end
    return doc, metadata["@change-vector"]
end

--- POST /queries (§3.2): the documents of the results.
function RavenDB:query(rql, params_json)
    local body = ('{"Query":%s,"QueryParameters":%s}'):format(json.encode(rql), params_json)
    local status, rbody, headers = self:send("POST", ("/databases/%s/queries?queryHash=%s")
        :format(self.database, runtime.uuid():gsub("%-", "")), body)
    if status == nil then return nil, rbody, headers end
    if status ~= 200 then
        local err, code = self:status_error(status, rbody, headers)
        return nil, err, code
    end
    local reply, err, code = decode_reply(rbody, "query")
    if not reply then return nil, err, code end
    if type(reply.Results) ~= "table" then
        return fail("decode", "query: reply without Results: %s", snippet(rbody))
    end
    for i, doc in ipairs(reply.Results) do
        if type(doc) ~= "table" then
            return fail("decode", "query: result %d is not a document", i)
        end
    end
    return reply.Results
end

RavenDB.close = cluster.close

return RavenDB
