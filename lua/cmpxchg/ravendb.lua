--- The RavenDB backend: the /databases/{db}/cmpxchg protocol over a
-- transport (libcurl in plain Lua, cosockets in nginx), with the topology,
-- failover and raft-request-id handling of the official clients. Wire
-- details and their sources: shared/ref/ravendb-protocol.md (§ below).
--
-- It implements the backend interface described in embedded.lua.
local check = require "cmpxchg.check"
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"
local nodes = require "cmpxchg.nodes"
local runtime = require "cmpxchg.runtime"

local tointeger = check.tointeger
local json_fields, json_texts = core.json_fields, core.json_texts
local fail, snippet = nodes.fail, nodes.snippet

local RavenDB = {}
RavenDB.__index = RavenDB

local DEFAULT_TIMEOUT = 15      -- seconds: the server's own Cluster.OperationTimeoutInSec
local LIST_PAGE = 1024          -- items per page when listing everything
local MAX_QUERY = 12000         -- bytes of key= parameters per GET (Kestrel caps lines at 16 KB)

-- the only reply headers read here (§6.3, §7.2)
local REPLY_HEADERS = { "refresh-topology", "database-missing" }

-- statuses after which another node may succeed (§6.3)
local FAILOVER = { [408] = true, [410] = true, [425] = true, [502] = true, [503] = true,
                   [504] = true }

--- RFC 3986 percent-encoding of everything but the unreserved set, so that
-- "+" and "/" survive ASP.NET's query decoding (§1.1).
local escape = core.url_escape
RavenDB.escape = escape

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
        return ("HTTP %d %s: %s"):format(status, kind, nodes.printable(reply.Message)), reply.Type
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

--- Opens a RavenDB store. `urls`: one URL or an array of them (cluster
-- seeds); opts: database (required), timeout, tls; `transports`: a factory
-- new(opts) -> object with request(method, url, body, headers, timeout).
function RavenDB.open(urls, opts, transports)
    local self = setmetatable({
        database = opts.database,
        timeout = opts.timeout or DEFAULT_TIMEOUT,
        transports = transports,
        transport_opts = { tls = opts.tls, connect_timeout = math.min(opts.timeout or 5, 5),
                           reply_headers = REPLY_HEADERS },
        connections = {},       -- url -> transport: one kept-alive connection per node
        nodes = {},             -- array of {url =, tag =}
        preferred = 1,
        topology_etag = -1,
        -- the seeds' scheme: a topology's nodes of another are not used
        scheme = urls[1]:match("^(%a+)://"):lower(),
    }, RavenDB)
    for i, url in ipairs(urls) do self.nodes[i] = { url = url:gsub("/+$", ""), tag = "?" } end
    local ok, err, code = self:update_topology()
    if not ok then
        self:close()
        return nil, err, code
    end
    return self
end

function RavenDB:describe()
    local urls = {}
    for i, node in ipairs(self.nodes) do urls[i] = node.url end
    return ("ravendb %s/%s"):format(table.concat(urls, ","), self.database)
end

RavenDB.connection = nodes.connection

--- Fetches GET /topology?name=db from the nodes in turn, as the official
-- clients' first topology update does (§6.1); stops at once on an answer
-- every node would give (403, unknown database).
function RavenDB:update_topology()
    local last_err, last_code
    for _, node in ipairs(self.nodes) do
        local url = ("%s/topology?name=%s"):format(node.url, escape(self.database))
        local status, body, headers = self:connection(node.url):request("GET", url, nil,
            nil, self.timeout)
        if status == 200 then
            local reply, err, code = decode_reply(body, "topology")
            if not reply then return nil, err, code end
            return self:set_topology(reply)
        elseif status == nil then
            last_err, last_code = body, headers
        else
            local err, code = self:status_error(status, body, headers)
            if not FAILOVER[status] or headers["database-missing"] then return nil, err, code end
            last_err, last_code = err, code
        end
    end
    return nil, last_err, last_code
end

--- Takes the nodes of a topology reply, checked before anything changes:
-- each Url must be a plain scheme://host[:port] (it goes into request lines),
-- and only nodes of the seeds' scheme are used, so an https seed never sends
-- values in plain text to the http nodes of a foreign topology.
function RavenDB:set_topology(reply)
    if not nodes.is_array(reply.Nodes) or #reply.Nodes == 0 then
        return fail("decode", "topology without nodes")
    elseif #reply.Nodes > MAX_NODES then
        return fail("decode", "topology of %d nodes (at most %d)", #reply.Nodes, MAX_NODES)
    end
    local members = {}
    for i, n in ipairs(reply.Nodes) do
        if type(n) ~= "table" or type(n.Url) ~= "string" then
            return fail("decode", "topology node %d has no Url", i)
        end
        local url = nodes.node_url(n.Url)
        if not url then
            return fail("decode", "topology node %d has a Url that is not scheme://host:port: %s",
                i, snippet(n.Url))
        end
        if url:match("^(%a+)"):lower() == self.scheme then
            members[#members + 1] = { url = url, tag = tostring(n.ClusterTag or "?") }
        end
    end
    if #members == 0 then
        return fail("decode", "the topology has no %s node (a foreign topology?)", self.scheme)
    end
    local preferred_url = self.nodes[self.preferred] and self.nodes[self.preferred].url
    self.nodes, self.preferred = members, 1
    for i, n in ipairs(members) do
        if n.url == preferred_url then self.preferred = i end
    end
    self.topology_etag = index_of(reply.Etag) or -1
    -- close connections to nodes that left the topology
    local keep = {}
    for _, n in ipairs(members) do keep[n.url] = true end
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

--- Sends one logical request: `path` is appended to a node URL. Writes carry
-- one raft-request-id for all their attempts, so a write that reached the
-- server before its reply was lost is applied once (§6.4). Tries the nodes
-- in order from the preferred one; a single node is tried twice.
-- Returns status, body, headers of an answer that is not a failover case.
function RavenDB:send(method, path, body, is_write)
    if is_write then
        path = path .. "&raft-request-id=" .. runtime.uuid()
    end
    -- the same two header tables for every request while the topology stands
    -- (transports only read them)
    local cache = self.headers_cache
    if cache == nil or cache.etag ~= self.topology_etag then
        local etag = ('"%d"'):format(self.topology_etag)
        cache = { etag = self.topology_etag, plain = { ["Topology-Etag"] = etag },
                  json = { ["Topology-Etag"] = etag, ["Content-Type"] = "application/json" } }
        self.headers_cache = cache
    end
    local headers = body and cache.json or cache.plain
    local n, first = #self.nodes, self.preferred
    local attempts = math.max(n, 2)
    local last_err, last_code
    for attempt = 1, attempts do
        local i = (first + attempt - 2) % n + 1
        local node = self.nodes[i]
        local status, rbody, rheaders = self:connection(node.url):request(method,
            node.url .. path, body, headers, self.timeout)
        if status == nil then
            last_err, last_code = rbody, rheaders
            if last_code == "tls" then break end        -- every node would say the same
        elseif FAILOVER[status] and not (rheaders and rheaders["database-missing"]) then
            last_err, last_code = self:status_error(status, rbody, rheaders)
        else
            self.preferred = i
            if rheaders and rheaders["refresh-topology"] == "true" then
                self:update_topology()      -- best effort: the answer stands either way
            end
            return status, rbody, rheaders
        end
        self.preferred = i % n + 1          -- the next call starts past a failed node
    end
    return nil, last_err, last_code
end

function RavenDB:cmpxchg_path(query)
    return "/databases/" .. self.database .. "/cmpxchg?" .. query
end

--- Runs a request whose answer must be 200: its body.
function RavenDB:call(method, query, body, is_write)
    local status, rbody, headers = self:send(method, self:cmpxchg_path(query), body, is_write)
    if status == nil then return nil, rbody, headers end
    if status ~= 200 then
        local err, code = self:status_error(status, rbody, headers)
        return nil, err, code
    end
    return rbody
end

function RavenDB:put(key, text, index, expires)
    local body
    if expires then
        body = ('{"Object":%s,"@metadata":{"@expires":"%s"}}'):format(text,
            core.format_time(expires))
    else
        body = '{"Object":' .. text .. "}"
    end
    local reply, err, code = self:call("PUT", ("key=%s&index=%d"):format(escape(key), index),
        body, true)
    if not reply then return nil, err, code end
    return write_result(reply, "put")
end

function RavenDB:delete(key, index)
    local reply, err, code = self:call("DELETE",
        ("key=%s&index=%d"):format(escape(key), index), nil, true)
    if not reply then return nil, err, code end
    return write_result(reply, "delete")
end

--- The items of a GET reply: {Results = [{Key, Value, Index}]} (§3.2). An
-- index is an integer, -1 for a missing key (§3.3), else positive in a
-- prefix listing (`listing`) and not negative in a GET by keys.
local function results_of(reply, listing)
    if not nodes.is_array(reply.Results) then
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

--- Lists a prefix. RavenDB counts its atomic guards in start/pageSize; when
-- the prefix can match them, pages are read from the start and the guards
-- skipped here, so start and page_size count only the items we return.
-- Pages go by offset: an item written meanwhile before the offset shifts
-- the next page, whose first items were then seen already and are left out;
-- a full page with nothing new is a server that makes no progress (decode),
-- and a listing ends after nodes.MAX_LIST_ITEMS items.
function RavenDB:list(prefix, start, page_size)
    local lower = core.fold_key(prefix)
    local guards_possible = GUARD:sub(1, #lower) == lower
    if not guards_possible and page_size then
        return self:list_page(prefix, start, page_size)
    end
    local out, skipped, offset = {}, 0, guards_possible and 0 or start
    local seen, read = {}, 0
    while true do
        local page, err, code = self:list_page(prefix, offset, LIST_PAGE)
        if not page then return nil, err, code end
        local new = 0
        for _, item in ipairs(page) do
            local folded = core.fold_key(item.key) or item.key
            if not seen[folded] then
                seen[folded] = true
                new = new + 1
                if item.key:lower():sub(1, #GUARD) ~= GUARD then
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
        if read > nodes.MAX_LIST_ITEMS then return nodes.too_many(prefix) end
    end
end

--- What the renewal thread repeats to keep a lease (csrc/renew.c): the put of
-- RavenDB.put with the value `parts` (JSON text with date slots) and
-- @expires `grace` seconds after the lease end, to the preferred node first
-- and to the next node after an error.
function RavenDB:renewal_plan(key, parts, grace)
    local tls = self.transport_opts.tls or {}
    return {
        kind = "http", method = "PUT",
        bases = nodes.in_turn(self.nodes, self.preferred, function(node) return node.url end),
        -- one raft-request-id per renewal, kept on its retries and failover (§6.4)
        url = { self:cmpxchg_path(("key=%s&index="):format(escape(key))), { slot = "index" },
                "&raft-request-id=", { slot = "id" } },
        value = parts,
        body = { '{"Object":', { slot = "value" }, ',"@metadata":{"@expires":"', grace, '"}}' },
        headers = { "Content-Type: application/json",
                    ('Topology-Etag: "%d"'):format(self.topology_etag) },
        timeout = math.min(self.timeout, 5),
        ca = tls.ca, cert = tls.cert, key_file = tls.key, verify = tls.verify,
        success_field = "Successful", index_field = "Index",
    }
end

RavenDB.close = nodes.close

return RavenDB
