--- The etcd backend: compare-exchange on etcd v3's JSON gateway, with
-- RavenDB's semantics. Wire details and their sources:
-- doc/etcd-v3-gateway.md (§ below). It implements the backend
-- interface described in embedded.lua.
--
-- Mapping: index = the key's mod_revision (etcd's global revision);
-- put(k, v, 0) = txn on create_revision == 0; put/delete with N = txn on
-- mod_revision == N; the failure branch reads the key, so a failed compare
-- returns the current value in the same round trip (§2.7). Keys are stored
-- folded (etcd keys are case-sensitive bytes) under "<database>:", and the
-- value is an envelope {"Key": original key, "Write": id, "Object": value}.
-- expires = a lease, shared by writes whose expiries are close (§3).
--
-- etcd has no request de-duplication (§5.3), and a write whose attempt timed
-- out may still be applied later: a compare-and-set on mod_revision N runs at
-- most once however often it is sent, so it is re-sent identically, and the
-- resend recognizes our own write by the envelope's Write id; a create is
-- never re-sent after an unknown outcome (after a delete, it could apply
-- again) but settled by a read. What cannot be settled is answered "timeout",
-- never true or false by guess.
local check = require "cmpxchg.check"
local core = require "cmpxchg.core"
local json = require "cmpxchg.json"
local cluster = require "cmpxchg.cluster"
local runtime = require "cmpxchg.runtime"

local b64, unb64 = core.b64encode, core.b64decode
local tointeger = check.tointeger
local json_fields, json_texts = core.json_fields, core.json_texts
local fail, snippet = check.fail, check.snippet

local unpack = table.unpack or unpack     -- luacheck: ignore 143

local Etcd = {}
Etcd.__index = Etcd

local DEFAULT_TIMEOUT = 5       -- seconds per request; etcd itself gives up after 7 s
Etcd.default_timeout = DEFAULT_TIMEOUT   -- what the renewal thread caps per turn
local MAX_TXN_OPS = 128         -- --max-txn-ops (§8)
local PAGE = 512                -- keys per range page when listing

-- Where a database's key space ends and its keys begin: every key of
-- database D is D .. ":" .. the folded key. ":" cannot be in a database name,
-- so no database's key space holds another's, whatever the names ("shop"
-- and "shop/eu", or "" and any other: "app/" once held "app/eu/"'s keys).
local DATABASE_END = ":"

--- A revision of a reply (a kv's mod_revision, a header's revision), or a
-- lease's TTL: a positive int64, written as a JSON string of digits (§1.3; a
-- JSON number is taken too); `default` when left out (§1.4). nil for anything
-- else: zero, a sign, a fraction, an exponent, hex, more than 64 bits. A write
-- that "succeeded" at revision 0 would hand out index 0, which means "absent"
-- to every caller.
local function int(v, default)
    if v == nil then return default end
    if type(v) == "string" then
        if #v > 19 or not v:find("^%d+$") then return nil end
        v = tonumber(v)
    end
    return type(v) == "number" and v > 0 and tointeger(v) or nil
end

--- A list field of a reply: the array, {} when left out (§1.4), or nil
-- when it is something else (a malformed reply).
local function list_of(v)
    if v == nil then return {} end
    if cluster.is_array(v) then return v end
    return nil
end

local function malformed(what)
    return fail("decode", "malformed %s in etcd's reply", what)
end

--- The exclusive end of the range of keys that start with `prefix` (§2.2).
local function prefix_end(prefix)
    local p = prefix:gsub("\255+$", "")
    if p == "" then return "\0" end
    return p:sub(1, -2) .. string.char(p:byte(-1) + 1)
end
-- internals the unit specs check directly (lua-resty-lock's way: not API)
Etcd._private = { prefix_end = prefix_end }

-- the options of cmpxchg.open an etcd store reads
local OPTIONS = { database = "string", timeout = "number", tls = "table", user = "string",
                  password = "string", watch = "boolean" }
Etcd.OPTIONS = OPTIONS

local function check_options(opts)
    check.options(opts, OPTIONS, 2, "open")
    if opts.database and opts.database:find("[^%w%-%._/]") then
        check.argerror(2, "open", "the etcd key prefix (database) holds only letters, digits "
            .. "and '-', '_', '.', '/'")
    end
    if (opts.user == nil) ~= (opts.password == nil) then
        check.argerror(2, "open", "options 'user' and 'password' go together")
    end
    if opts.timeout ~= nil then check.seconds(opts.timeout, "timeout", 2, "open") end
    cluster.check_tls(opts.tls)
end

--- Opens an etcd store: `endpoints` are etcd(s):// (or http(s)://) URLs;
-- opts: database (key prefix), timeout, tls, user and password (etcd auth);
-- `transports` (tests) a factory new(opts) -> object with request(method,
-- url, body, headers, timeout), by default the runtime's.
function Etcd.open(endpoints, opts, transports)
    check_options(opts)
    local self = setmetatable({
        endpoints = {},
        prefix = (opts.database or "") .. DATABASE_END,
        timeout = opts.timeout or DEFAULT_TIMEOUT,
        transports = transports or runtime.transport(),
        transport_opts = { tls = opts.tls, connect_timeout = math.min(opts.timeout or 2, 2),
                           reply_headers = {} },     -- no reply header is read here
        connections = {},
        preferred = 1,
        user = opts.user, password = opts.password,
        leases = {},            -- granted leases still good: {id =, ends =}
        -- waiters wait by watching the keys (§7), unless told to poll
        can_watch = opts.watch ~= false,
    }, Etcd)
    for i, url in ipairs(endpoints) do
        -- the JSON gateway speaks HTTP: etcd:// is http://, etcds:// https://
        url = url:gsub("^[Ee][Tt][Cc][Dd]([Ss]?)://", "http%1://")
        self.endpoints[i] = url:gsub("/+$", "")
    end
    if self.user then
        local ok, err, code = self:authenticate()
        if not ok then
            self:close()
            return nil, err, code
        end
    end
    -- one linearizable read: connectivity, TLS and permissions fail here
    local reply, err, code = self:post("/v3/kv/range",
        { key = b64(self.prefix), count_only = true })
    if not reply then
        self:close()
        return nil, err, code
    end
    return self
end

function Etcd:describe()
    local urls = {}
    for i, url in ipairs(self.endpoints) do urls[i] = check.shown_url(url) end
    return ("etcd %s/%s"):format(table.concat(urls, ","), self.prefix:sub(1, -2))
end

Etcd.connection = cluster.connection

--[[ Requests, failover and error classes ]]

--- What an error answer (not 200) means: "final" (a definite error: not
-- applied), "unavailable" (no leader: not applied, another member may serve
-- it), "unknown" (the request may have been applied), "auth" (token expired).
-- "leader changed" is etcd's answer when leadership moved while a
-- linearizable read waited for its read index (etcdserver's
-- requestCurrentIndex, "a retryable error"): the read was not served. A write
-- never waits there, but should one ever be answered so, it stays unknown.
local function classify(status, reply, write)
    local message = type(reply) == "table" and tostring(reply.message or reply.error) or ""
    if status == 401 then return "auth" end
    if status == 503 and message:find("no leader", 1, true) then return "unavailable" end
    if status == 503 and not write and message:find("leader changed", 1, true) then
        return "unavailable"
    end
    if status == 503 or status == 504 or (status == 500 and type(reply) == "table" and
            reply.code == 2) or (status >= 500 and type(reply) ~= "table") then
        return "unknown"
    end
    return "final"
end

--- The contract's err, code for an etcd error answer (§4.1).
local function answer_error(status, reply, body)
    local message = type(reply) == "table" and (reply.message or reply.error)
    message = type(message) == "string" and check.printable(message) or snippet(body or "")
    if status == 403 or message:find("user name is empty", 1, true) or
            message:find("authentication failed", 1, true) or status == 401 then
        return ("auth: HTTP %d: %s"):format(status, message), "auth"
    elseif message:find("no leader", 1, true) or message:find("timed out", 1, true) or
            message:find("deadline exceeded", 1, true) or
            message:find("leader changed", 1, true) then    -- an election: try again later
        return ("timeout: HTTP %d: %s"):format(status, message), "timeout"
    elseif message:find("requested lease not found", 1, true) then
        return "lease: " .. message, "lease"      -- handled by put, never returned
    end
    return ("http: HTTP %d: %s"):format(status, message), "http"
end

function Etcd:headers()
    -- one table while the token and timeout stand (transports only read it)
    local cached = self.headers_cache
    if cached and cached.token == self.token and cached.timeout == self.timeout then
        return cached.headers
    end
    local h = {
        ["Content-Type"] = "application/json",
        -- a member without a leader refuses at once instead of after 7 s,
        -- and the write was then certainly not proposed (§4.3)
        ["Grpc-Metadata-hasleader"] = "true",
        -- the server answers just before our own timeout cuts the connection
        ["Grpc-Timeout"] = ("%dm"):format(math.max(100, math.floor(self.timeout * 1000) - 300)),
    }
    if self.token then h.Authorization = self.token end     -- raw, no Bearer (§6.2)
    self.headers_cache = { token = self.token, timeout = self.timeout, headers = h }
    return h
end

--[[ What an exchange may do after an attempt whose outcome is unknown (a
timeout, a dropped connection, a 5xx that does not say "not applied"): etcd
has no request de-duplication, and such a write may still be applied later
(§4.3, §5.3). ]]
local READ = "read"         -- applies nothing: any member may answer it again
-- a txn whose compare its own first application falsifies for ever (the
-- key's mod_revision == N, N > 0: revision N never comes back): the identical
-- txn is sent again, and at most one copy can apply
local GUARDED = "guarded"
-- a create (create_revision == 0 holds again after any delete): never sent
-- again after an unknown attempt, or created-deleted-created could happen;
-- the caller settles it by reading the key
local ONCE = "once"

-- seconds between rounds of a call that waits for a leader to be elected:
-- the first pause, doubled each round up to the second
local ELECTION_PAUSE, ELECTION_PAUSE_MAX = 0.025, 0.25

--- The answer for a write whose outcome could not be settled: a timeout.
local function unsettled(err, code)
    if code == "timeout" then return ("%s (the write may have been applied)"):format(err) end
    return ("timeout: the write may have been applied (%s)"):format(err)
end

--- POSTs `body` (a table, or its JSON text) to each endpoint in turn until
-- one answers. `how` (READ by default): what may follow an attempt whose
-- outcome is unknown, see above. An attempt refused before anything was sent
-- (the transport says `unsent`), or answered "no leader" or 4xx, was not
-- applied. `attempts`: at most that many requests (default: one per
-- endpoint, at least 2), each bounded by the timeout. When every member
-- failed and one of them said it has no leader, the cluster is electing one
-- (a second or two after its leader died): the call tries every member again
-- after a pause, until the timeout has passed since it began, rather than
-- fail a request that was not applied; never when `attempts` is given (a
-- caller's budget). Returns the text of a 200 reply and whether an earlier
-- attempt may have been applied (`unknown`), or nil, err, code, unknown,
-- attempts used; a write that may have been applied and got no 200 answer
-- fails with code "timeout".
function Etcd:exchange(path, body, how, unauthenticated, attempts)
    local text = type(body) == "string" and body or assert(json.encode(body))
    local write = how == GUARDED or how == ONCE
    local n = #self.endpoints
    local unknown, reauthenticated, used = false, false, 0
    local ended             -- the call's answer, once an attempt decided it
    -- a failure that ends the call: after an attempt that may have been
    -- applied, a write's outcome is unknown (defect 2 of the safety issue)
    local function finish(err, code)
        if write and unknown then
            ended = { nil, unsettled(err, code), "timeout", true, used }
        else
            ended = { nil, err, code, false, used }
        end
        return "final"
    end
    local err, code
    local election          -- a member of this round said it has no leader
    local before = 0        -- the requests of the rounds before this one
    local function attempt(i, k)
        used = before + k
        local status, reply_body, rheaders, unsent = self:connection(self.endpoints[i]):request(
            "POST", self.endpoints[i] .. path, text, unauthenticated and
            { ["Content-Type"] = "application/json" } or self:headers(), self.timeout)
        if status == 200 then
            self.preferred = i
            return "answer", reply_body, unknown
        elseif status == nil and rheaders == "tls" then
            return finish(reply_body, rheaders)         -- every member would say the same
        end
        self.preferred = i % n + 1          -- the next call starts past a failed member
        if status == nil then
            err, code = reply_body, rheaders
            if unsent ~= true then unknown = true end   -- it may have been applied
        else
            local reply = json.decode(reply_body)
            local class = classify(status, reply, write)
            if class == "auth" and self.user and not reauthenticated then
                -- the token expired (it is idle-timed, §6.2): once more with a new one
                reauthenticated = true
                local ok, aerr, acode = self:authenticate()
                if not ok then return finish(aerr, acode) end
                return "again"
            end
            err, code = answer_error(status, reply, reply_body)
            if class == "final" or class == "auth" then return finish(err, code) end
            if class == "unknown" then unknown = true end
            if class == "unavailable" then election = true end
        end
        if unknown and how == ONCE then return finish(err, code) end
        return "next", err, code
    end
    local deadline = runtime.monotime() + self.timeout
    local pause = ELECTION_PAUSE
    while true do
        election, before = false, used
        local rbody, was_unknown = cluster.try_in_turn(cluster.from(self.preferred, n), attempt,
            attempts)
        if rbody ~= nil then return rbody, was_unknown end
        if ended or not election or attempts or runtime.monotime() + pause >= deadline then
            break
        end
        -- jittered, so that the clients of one cluster do not come back together
        runtime.sleep(pause * (0.5 + 0.5 * runtime.random()))
        pause = math.min(2 * pause, ELECTION_PAUSE_MAX)
    end
    if not ended then finish(err, code) end         -- every attempt failed
    return unpack(ended, 1, 5)
end

local function not_json(text, path)
    return fail("decode", "%s: the reply is not a JSON object: %s", path, snippet(text))
end

--- A 200 reply's text as a table; nil, err, code when it is not a JSON object.
local function decode_object(text, path)
    local reply = json.decode(text)
    if type(reply) ~= "table" then return not_json(text, path) end
    return reply
end

--- A txn's reply: true and the new revision when it succeeded (read by picking
-- two fields: the common case decodes nothing), false and the decoded reply
-- (its responses say what the compares found) when it did not; nil, err, code
-- when it is neither.
local function txn_reply(body)
    local valid, succeeded, revision = json_fields(body, "succeeded", "header.revision")
    if not valid then return not_json(body, "txn") end
    if succeeded == true then
        revision = int(revision)
        if not revision then return malformed("header") end
        return true, revision
    end
    local reply, err, code = decode_object(body, "txn")
    if not reply then return nil, err, code end
    return false, reply
end

--- As exchange, with the reply decoded: reply, unknown | nil, err, code.
function Etcd:post(path, body, unauthenticated)
    local text, unknown, code = self:exchange(path, body, READ, unauthenticated)
    if not text then return nil, unknown, code end
    local reply, err
    reply, err, code = decode_object(text, path)
    if not reply then return nil, err, code end
    return reply, unknown
end

function Etcd:authenticate()
    local reply, err, code = self:post("/v3/auth/authenticate",
        { name = self.user, password = self.password or "" }, true)
    if not reply then return nil, err, code end
    -- the token goes into a header: printable ASCII only, of a sane length
    local token = reply.token
    if type(token) ~= "string" or token == "" or #token > 4096 or token:find("[^\33-\126]") then
        return fail("decode", "authenticate: no usable token in the reply: %s",
            snippet(tostring(token)))
    end
    self.token = token
    return true
end

--[[ Values ]]

function Etcd:key_of(key)
    return self.prefix .. assert(core.fold_key(key))
end

--- The envelope written for `key`: its original spelling, a unique write
-- id (to recognize our own write after an unknown outcome) and the value.
local function envelope(key, text, write_id)
    return ('{"Key":%s,"Write":"%s","Object":%s}'):format(json.encode(key), write_id, text)
end

--- original key, value, index, write id of a kv from a reply (read_kv), or
-- of its mod_revision and value (read_entry); nil, err, code when malformed
-- (callers test the first result).
local function read_entry(mod_revision, value64)
    local index = int(mod_revision)
    if not index then
        return fail("decode", "a kv's mod_revision is not a positive integer: %s",
            snippet(json.encode(mod_revision)))
    end
    -- an empty value is left out (§1.4)
    local raw = value64 == nil and "" or type(value64) == "string" and unb64(value64)
    if not raw then
        return fail("decode", "a kv's value is not base64 text: %s", snippet(json.encode(value64)))
    end
    local env = json.decode(raw)
    if type(env) ~= "table" or env.Object == nil or type(env.Key) ~= "string" then
        return fail("decode", "a value under the store's prefix is not one of ours: %s",
            snippet(raw))
    end
    return env.Key, env.Object, index, env.Write
end

--- read_entry of a kv table; `k64`, when given, the base64 key it must have.
local function read_kv(kv, k64)
    if type(kv) ~= "table" or (k64 and kv.key ~= k64) then
        return fail("decode", "malformed kv in a reply")
    end
    return read_entry(kv.mod_revision, kv.value)
end

--- The current kv in a failed txn's read branch (§2.7): index, value, write
-- id, create_revision, or 0 when the key is absent.
local function current_of(reply)
    local responses = list_of(reply.responses)
    local r = responses and type(responses[1]) == "table" and responses[1].response_range
    if type(r) ~= "table" then return malformed("txn responses") end
    local kvs = list_of(r.kvs)
    if kvs == nil then return malformed("kvs") end
    local kv = kvs[1]
    if kv == nil then return 0 end
    local original, value, index, write_id = read_kv(kv)
    if original == nil then return nil, value, index end       -- decode error
    local created = int(kv.create_revision)
    if not created then return malformed("kv") end
    return index, value, write_id, created
end

--[[ Leases (§3) ]]

--- A lease ID of 18 decimal digits (below 2^63, never 0) from the kernel's
-- randomness: the random bytes of UUIDs (not the two that carry the version
-- and variant bits), each below 250 taken mod 10 (unbiased), so no two
-- processes draw alike, whatever their Lua's math.random.
local function lease_id()
    local digits = { "1" }
    while #digits < 18 do
        local hex = runtime.uuid():gsub("%-", "")
        for i = 0, 15 do
            local byte = tonumber(hex:sub(2 * i + 1, 2 * i + 2), 16)
            if i ~= 6 and i ~= 8 and byte < 250 and #digits < 18 then
                digits[#digits + 1] = byte % 10
            end
        end
    end
    return table.concat(digits)
end

--- A lease ending no earlier than `expires` and not much later, reused by
-- writes whose expiries are close rather than one lease per write.
function Etcd:lease_for(expires)
    local now = runtime.time()
    local slack = math.max(1, 0.1 * (expires - now))
    local keep = {}
    local found
    for _, l in ipairs(self.leases) do
        if l.ends > now then keep[#keep + 1] = l end
        if not found and l.ends >= expires and l.ends <= expires + slack then found = l end
    end
    self.leases = keep
    if found then return found.id end
    local ttl = math.max(2, math.ceil(expires - now + slack / 2))
    -- a fresh random ID per grant; one that etcd says exists already is never
    -- taken for ours (it may be another process's lease, ending at another
    -- time): another ID is drawn. A grant of ours whose reply was lost just
    -- lapses unused.
    for _ = 1, 3 do
        local id = lease_id()
        local sent = runtime.time()
        local reply, err, code = self:post("/v3/lease/grant", { ID = id, TTL = ttl })
        if reply then
            local granted = int(reply.TTL, ttl)
            if granted == nil or granted < 1 then return malformed("lease grant TTL") end
            self.leases[#self.leases + 1] = { id = id, ends = sent + math.min(ttl, granted) }
            return id
        elseif not (err and err:find("lease already exists", 1, true)) then
            return nil, err, code
        end
    end
    return fail("http", "etcd said three fresh lease IDs exist already")
end

function Etcd:forget_lease(id)
    for i, l in ipairs(self.leases) do
        if l.id == id then table.remove(self.leases, i) return end
    end
end

--[[ Operations ]]

--[[ Txns are written as JSON text: every piece is base64 or a decimal,
neither of which needs escaping, and a format is cheaper than building and
encoding tables on every write. ]]

--- The compare of a txn on `k64` (a base64 key): index 0 = absent (create),
-- else the key's mod_revision.
local function compare(k64, index)
    if index == 0 then
        return ('{"key":"%s","target":"CREATE","result":"EQUAL","create_revision":"0"}')
            :format(k64)
    end
    return ('{"key":"%s","target":"MOD","result":"EQUAL","mod_revision":"%d"}')
        :format(k64, index)
end

--- A txn on `k64`: the compare on `index`, the request `success` (JSON
-- text) and the read of the key when the compare fails (§2.7).
local function txn(k64, index, success)
    return ('{"compare":[%s],"success":[%s],"failure":[{"request_range":{"key":"%s"}}]}')
        :format(compare(k64, index), success, k64)
end

--- The txn of a put on `k64` of `value64` (base64), under `lease` if any.
local function put_txn(k64, index, value64, lease)
    return txn(k64, index, ('{"request_put":{"key":"%s","value":"%s"%s}}'):format(k64,
        value64, lease and (',"lease":"%s"'):format(lease) or ""))
end

--- The answer for a write whose earlier attempt may have been applied and
-- whose resend's failed compare cannot tell.
local function unknown_outcome(what, key)
    return fail("timeout", "%s '%s': an attempt timed out or was cut, and the resend's compare "
        .. "failed: the write may have been applied", what, key)
end

--- After a create of unknown outcome: the index of the key when it holds
-- our write (`write_id`), false when it does not (then the create may still
-- be applied later, or have been replaced), or nil, err, code. At most
-- `attempts` requests: the put's own requests stay within one per endpoint.
function Etcd:holds_write(k64, write_id, attempts)
    if attempts < 1 then return false end
    local body, err, code = self:exchange("/v3/kv/range", ('{"key":"%s"}'):format(k64), READ,
        nil, attempts)
    if not body then return nil, err, code end
    local valid, first = json_texts(body, "kvs.0")
    if not valid then return not_json(body, "range") end
    if first == nil then return false end
    local _, mod_revision, value64 = json_fields(first, "mod_revision", "value")
    local original, _, index, write = read_entry(mod_revision, value64)
    if original == nil then return false end
    return write == write_id and index
end

--[[ put and delete settle an attempt of unknown outcome (§5.3) this way:
* put(k, v, N), N > 0, and delete(k, N): the identical txn is sent again
  (GUARDED). Its success is ours. A failed compare whose current value carries
  our write id is ours too. A delete whose failed compare shows the key
  created no later than N did not apply: the key was not deleted since it held
  revision N, and never holds N again. Anything else may be our first attempt
  applied and then replaced or deleted by someone else, or another client's
  write: unknown, a timeout.
* put(k, v, 0): never sent again (ONCE); a read settles it: our write id
  there means applied, anything else is unknown. ]]

function Etcd:put(key, text, index, expires)
    local k64 = b64(self:key_of(key))
    local write_id = runtime.uuid()
    local value64 = b64(envelope(key, text, write_id))
    local lease
    for _ = 1, 2 do                 -- a second time when the lease expired meanwhile
        if expires then
            local err, code
            lease, err, code = self:lease_for(expires)
            if not lease then return nil, err, code end
        end
        -- body, unknown | nil, err, code, unknown, attempts used
        local body, unknown, code, maybe, used = self:exchange("/v3/kv/txn",
            put_txn(k64, index, value64, lease), index == 0 and ONCE or GUARDED)
        local err = not body and unknown
        if body then
            local succeeded, reply, rcode = txn_reply(body)
            if succeeded ~= false then return succeeded, reply, rcode end
            local cur, value, cur_write = current_of(reply)
            if cur == nil then return nil, value, cur_write end
            if cur_write == write_id then
                return true, cur        -- our own write, applied by an earlier attempt
            end
            if unknown then return unknown_outcome("put", key) end
            return false, cur, value
        elseif maybe and index == 0 then
            local ours = self:holds_write(k64, write_id,
                math.max(#self.endpoints, 2) - used)
            if ours then return true, ours end
            return nil, err, code
        elseif code == "lease" and lease then
            self:forget_lease(lease)
        else
            return nil, err, code
        end
    end
    return fail("http", "the lease for '%s' expired twice while writing", key)
end

-- where a successful delete's reply has the deleted kv (prev_kv)
local DELETED = "responses.0.response_delete_range.prev_kvs.0."

function Etcd:delete(key, index)
    local k64 = b64(self:key_of(key))
    -- index 0 compares "absent", where deleting removes nothing: safe to resend
    local body, unknown, code = self:exchange("/v3/kv/txn", txn(k64, index,
        ('{"request_delete_range":{"key":"%s","prev_kv":true}}'):format(k64)), GUARDED)
    if not body then return nil, unknown, code end
    local valid, succeeded, revision, prev_revision, prev_value = json_fields(body, "succeeded",
        "header.revision", DELETED .. "mod_revision", DELETED .. "value")
    if not valid then return not_json(body, "txn") end
    revision = int(revision)
    if not revision then return malformed("header") end
    if succeeded == true then
        if index == 0 then return false, 0, nil end     -- compared "absent": nothing deleted
        local original, value, dcode = read_entry(prev_revision, prev_value)
        if original == nil then return nil, value, dcode end
        return true, revision, value
    end
    local reply, err, dcode = decode_object(body, "txn")
    if not reply then return nil, err, dcode end
    local cur, value, err_code, created = current_of(reply)
    if cur == nil then return nil, value, err_code end
    if unknown and index ~= 0 and not (cur ~= 0 and created <= index) then
        return unknown_outcome("delete", key)
    end
    return false, cur, value
end

function Etcd:get(key)
    local k64 = b64(self:key_of(key))
    local body, err, code = self:exchange("/v3/kv/range", ('{"key":"%s"}'):format(k64))
    if not body then return nil, err, code end
    local valid, kvs, first = json_texts(body, "kvs", "kvs.0")
    if not valid then return not_json(body, "range") end
    if first == nil then            -- no kv: kvs is left out or empty (§1.4)
        if kvs == nil or kvs:sub(1, 1) == "[" then return 0, nil end
        return malformed("kvs")
    end
    local _, mod_revision, value64, kv_key = json_fields(first, "mod_revision", "value", "key")
    if kv_key ~= k64 then return malformed("kv (of another key)") end
    local original, value, index = read_entry(mod_revision, value64)
    if original == nil then return nil, value, index end
    return index, value
end

--- Reads keys with range-only txns: one snapshot per 128 keys (§2.7, §8).
function Etcd:get_many(keys)
    local results = {}
    for first = 1, #keys, MAX_TXN_OPS do
        local ops = {}
        for i = first, math.min(#keys, first + MAX_TXN_OPS - 1) do
            ops[#ops + 1] = { request_range = { key = b64(self:key_of(keys[i])) } }
        end
        local reply, err, code = self:post("/v3/kv/txn", { success = ops })
        if not reply then return nil, err, code end
        local responses = list_of(reply.responses)
        if responses == nil then return malformed("txn responses") end
        for j = 1, #ops do
            local r = type(responses[j]) == "table" and responses[j].response_range
            local kvs = type(r) == "table" and list_of(r.kvs)
            if not kvs then return malformed("txn responses") end
            local kv = kvs[1]
            if kv then
                local original, value, index = read_kv(kv, ops[j].request_range.key)
                if original == nil then return nil, value, index end
                results[first + j - 1] = { index = index, value = value }
            else
                results[first + j - 1] = { index = 0 }
            end
        end
    end
    return results
end

--- One kv of a range under the stored prefix `p`: its stored name and the
-- item {key, value, index} | nil, err, code. Anything may come back: a key
-- outside the prefix, or one seen twice (`seen`, by name), is refused.
local function range_item(kv, p, seen)
    local name = type(kv) == "table" and type(kv.key) == "string" and unb64(kv.key)
    if not name or name:sub(1, #p) ~= p or seen[name] then
        return fail("decode", "range: a key outside '%s', or seen twice: %s", p, snippet(name))
    end
    seen[name] = true
    local original, value, index = read_kv(kv)
    if original == nil then return nil, value, index end
    return name, { key = original, value = value, index = index }
end

--- Lists by key range, paging by key on one pinned revision (§2.3); etcd
-- has no offset, so `start` items are skipped here. A page must hold no more
-- kvs than asked for, each under the prefix and new to this listing (pages
-- go by key: a key seen twice is a server that makes no progress), and a
-- listing ends after cluster.MAX_LIST_ITEMS items.
function Etcd:list(prefix, start, page_size)
    local p = self.prefix .. assert(core.fold_key(prefix))
    local from, range_end = p ~= "" and p or "\0", prefix_end(p)
    local out, skipped, revision, seen, read = {}, 0, nil, {}, 0
    while true do
        local want = PAGE
        if page_size then want = math.min(PAGE, page_size + start - skipped - #out) end
        local text, err, code = self:exchange("/v3/kv/range", { key = b64(from),
            range_end = b64(range_end), limit = tostring(want),
            revision = revision and ("%d"):format(revision) })
        if not text then return nil, err, code end
        local valid, extra = json_texts(text, "kvs." .. want)
        if valid and extra ~= nil then
            return fail("decode", "range: a page of more than the %d kvs asked for", want)
        end
        local reply
        reply, err, code = decode_object(text, "range")
        if not reply then return nil, err, code end
        revision = revision or (type(reply.header) == "table" and int(reply.header.revision))
        if not revision then return malformed("header") end
        local kvs = list_of(reply.kvs)
        if kvs == nil then return malformed("kvs") end
        read = read + #kvs
        if read > cluster.MAX_LIST_ITEMS then return cluster.too_many(prefix) end
        local last
        for _, kv in ipairs(kvs) do
            local item, icode
            last, item, icode = range_item(kv, p, seen)
            if not last then return nil, item, icode end
            if skipped < start then
                skipped = skipped + 1
            else
                out[#out + 1] = item
                if page_size and #out >= page_size then return out end
            end
        end
        if not reply.more then return out end
        if not last then return malformed("range (more, and no kvs)") end
        from = last .. "\0"
    end
end

--[[ Passing a lock on in one commit (handoff.lua) ]]

--- The first `n` (at most 16) keys under `prefix` in the order they were
-- created, {key, value, index} each, as the member asked has them: a
-- serializable read, which costs no round of the cluster and may be behind
-- it. Fit only for a caller whose write then compares what it read (pass).
function Etcd:oldest(prefix, n)
    assert(n >= 1 and n <= 16)
    local p = self.prefix .. assert(core.fold_key(prefix))
    local text, err, code = self:exchange("/v3/kv/range", ('{"key":"%s","range_end":"%s",'
        .. '"limit":"%d","sort_order":"ASCEND","sort_target":"CREATE","serializable":true}')
        :format(b64(p), b64(prefix_end(p)), n))
    if not text then return nil, err, code end
    local reply
    reply, err, code = decode_object(text, "range")
    if not reply then return nil, err, code end
    local kvs = list_of(reply.kvs)
    if kvs == nil or #kvs > n then return malformed("kvs") end
    local out, seen = {}, {}
    for i, kv in ipairs(kvs) do
        local name, item, icode = range_item(kv, p, seen)
        if not name then return nil, item, icode end
        out[i] = item
    end
    return out
end

-- where pass's reply says whether the lock went to `to` (true) or was deleted
local PASSED = "responses.0.response_txn.succeeded"

--[[ Etcd:pass(key, index, to, text, lease, drop) -> the lock at `key`, held
at `index`, ended in one txn: written as `text` (under `lease`) when `to` is
given and the key `to.key` is still at `to.index` (a waiter's queue entry: the lock is passed
to it, and that entry written as `to.text`, under the same lease, to tell
its waiter), else deleted; the keys in `drop` (the releaser's own entry, a
dead holder's) deleted with it. true, revision, passed (true: written for `to`; false:
deleted) | false, current index, value (the compare on `index` failed) |
nil, err, code. After an attempt of unknown outcome the identical txn is
sent again; a failed compare that finds our own write is ours, any other is
unknown ("timeout"). ]]
function Etcd:pass(key, index, to, text, lease, drop)
    local k64 = b64(self:key_of(key))
    local write_id = runtime.uuid()
    local function put(p64, original, value)
        return ('{"request_put":{"key":"%s","value":"%s","lease":"%s"}}'):format(p64,
            b64(envelope(original, value, write_id)), lease)
    end
    local delete = ('{"request_delete_range":{"key":"%s"}}'):format(k64)
    local success = delete
    if to then
        local to64 = b64(self:key_of(to.key))
        success = ('{"request_txn":{"compare":[%s],"success":[%s,%s],"failure":[%s]}}'):format(
            compare(to64, to.index), put(k64, key, text), put(to64, to.key, to.text), delete)
    end
    for _, gone in ipairs(drop or {}) do
        success = success .. (',{"request_delete_range":{"key":"%s"}}')
            :format(b64(self:key_of(gone)))
    end
    local body, unknown, code = self:exchange("/v3/kv/txn", txn(k64, index, success), GUARDED)
    if not body then return nil, unknown, code end
    local valid, succeeded, revision, passed = json_fields(body, "succeeded", "header.revision",
        PASSED)
    if not valid then return not_json(body, "txn") end
    if succeeded == true then
        revision = int(revision)
        if not revision then return malformed("header") end
        return true, revision, passed == true
    end
    local reply, err, rcode = decode_object(body, "txn")
    if not reply then return nil, err, rcode end
    local cur, value, cur_write = current_of(reply)
    if cur == nil then return nil, value, cur_write end
    if cur_write == write_id then return true, cur, true end    -- an earlier attempt's
    -- after an unknown outcome, a failed compare cannot tell: the key passed
    -- on by our first attempt may have been written again by its new holder
    if unknown then return unknown_outcome("release", key) end
    return false, cur, value
end

--[[ Transactions: one txn, a compare per key (the compares of put and
delete), the writes in its success branch, a read of every key in its failure
branch, so that a failed compare reports every key's current value from the
same round trip (§2.6, §2.7). ]]

local MAX_REQUEST_BYTES = 1572864   -- --max-request-bytes, the default (§8)
-- what the request adds to its operations: the txn's framing and headers
local REQUEST_OVERHEAD = 4096

Etcd.txn_limits = {
    ops = MAX_TXN_OPS,
    ops_why = "an etcd transaction holds at most 128 operations (etcd's --max-txn-ops, "
        .. "its default)",
    bytes = MAX_REQUEST_BYTES - REQUEST_OVERHEAD,
    bytes_why = ("an etcd transaction is one request of at most %d bytes (etcd's "
        .. "--max-request-bytes, its default), each key counted three times (compare, write, "
        .. "read back) and each value in its envelope, %d bytes kept for the request itself")
        :format(MAX_REQUEST_BYTES, REQUEST_OVERHEAD),
}

--- What operation `op` adds to the raft request: its stored key in the
-- compare, the write and the failure branch's read, its envelope, and the
-- protobuf framing of those.
function Etcd:txn_cost(op)
    local key = #self:key_of(op.key)
    local cost = 3 * key + 24
    if op.kind == "put" then cost = cost + #op.text + #op.key + 96 end
    return cost
end

--- The current state of each key from a failed txn's read branch:
-- array of {index =, value =, write =, created =} (index 0: absent), or nil,
-- err, code when the reply is malformed.
local function currents_of(reply, n)
    local responses = list_of(reply.responses)
    if responses == nil then return malformed("txn responses") end
    local out = {}
    for i = 1, n do
        local r = type(responses[i]) == "table" and responses[i].response_range
        local kvs = type(r) == "table" and list_of(r.kvs)
        if not kvs then return malformed("txn responses") end
        local kv = kvs[1]
        if kv == nil then
            out[i] = { index = 0 }
        else
            local original, value, index, write = read_kv(kv)
            if original == nil then return nil, value, index end
            local created = int(kv.create_revision)
            if not created then return malformed("kv") end
            out[i] = { index = index, value = value, write = write, created = created }
        end
    end
    return out
end

--- Whether op's compare holds on `cur` (the key's state now).
local function holds(op, cur)
    if op.index == 0 then return cur.index == 0 end
    return cur.index == op.index
end

--[[ How a transaction whose earlier attempt may have been applied is
settled, from the state of its keys now (its identical resend's failure
branch, or a read):
* a put key holding our write id: applied, at that key's revision;
* else, when the transaction can never apply from now on (the compare of a
  key at N > 0 fails: revision N never comes back) and the state shows it
  did not (a key at N still at revision N, or a key deleted at N present and
  created no later than N): not applied, a definite failure;
* anything else: unknown. ]]
local function settle(ops, currents, write_id)
    for i, op in ipairs(ops) do
        local cur = currents[i]
        if op.kind == "put" and cur.index > 0 and cur.write == write_id then
            return "applied", cur.index
        end
    end
    local permanent, unapplied = false, false
    for i, op in ipairs(ops) do
        local cur = currents[i]
        if op.index > 0 then
            if not holds(op, cur) then permanent = true end
            if (op.kind == "put" and cur.index == op.index) or (op.kind == "delete" and
                    cur.index > 0 and cur.created <= op.index) then
                unapplied = true
            end
        end
    end
    return permanent and unapplied and "unapplied" or "unknown"
end

--- The conflicts of a failed transaction: the operations whose compare
-- fails on `currents`, as {key =, index =, value =}.
local function conflicts_of(ops, currents)
    local out = {}
    for i, op in ipairs(ops) do
        local cur = currents[i]
        if not holds(op, cur) then
            out[#out + 1] = { key = op.key, index = cur.index, value = cur.value }
        end
    end
    return out
end

--- Reads the keys of `ops` in one snapshot (a range-only txn), at most
-- `attempts` requests: their currents, or nil, err, code.
function Etcd:read_keys(ops, attempts)
    local reads = {}
    for i, op in ipairs(ops) do
        reads[i] = ('{"request_range":{"key":"%s"}}'):format(b64(self:key_of(op.key)))
    end
    local body, err, code = self:exchange("/v3/kv/txn", ('{"success":[%s]}')
        :format(table.concat(reads, ",")), READ, nil, attempts)
    if not body then return nil, err, code end
    local reply
    reply, err, code = decode_object(body, "txn")
    if not reply then return nil, err, code end
    return currents_of(reply, #ops)
end

--- The txn of `ops`, their values in envelopes carrying `write_id`, under
-- the leases of `leases` ({[expires] = lease id}).
function Etcd:txn_body(ops, write_id, leases)
    local compares, success, failure = {}, {}, {}
    for i, op in ipairs(ops) do
        local k64 = b64(self:key_of(op.key))
        compares[i] = compare(k64, op.index)
        failure[i] = ('{"request_range":{"key":"%s"}}'):format(k64)
        if op.kind == "put" then
            local lease = op.expires and leases[op.expires]
            success[#success + 1] = ('{"request_put":{"key":"%s","value":"%s"%s}}'):format(k64,
                b64(envelope(op.key, op.text, write_id)),
                lease and (',"lease":"%s"'):format(lease) or "")
        elseif op.index > 0 then
            success[#success + 1] = ('{"request_delete_range":{"key":"%s"}}'):format(k64)
        end
    end
    return ('{"compare":[%s],"success":[%s],"failure":[%s]}'):format(table.concat(compares, ","),
        table.concat(success, ","), table.concat(failure, ","))
end

--[[ A transaction is sent as put is (§5.3): GUARDED when a key is compared
at N > 0 (the txn can then apply only once however often it is sent: the
identical txn is sent again after an unknown attempt), ONCE otherwise (only
creates and checks of absence, which hold again after a delete: never sent
again, settled by reading the keys). ]]
function Etcd:transaction(ops)
    local write_id = runtime.uuid()
    local guarded = false
    for _, op in ipairs(ops) do
        if op.index > 0 then guarded = true end
    end
    for _ = 1, 2 do                 -- a second time when a lease expired meanwhile
        local leases = {}
        for _, op in ipairs(ops) do
            if op.expires and not leases[op.expires] then
                local lease, err, code = self:lease_for(op.expires)
                if not lease then return nil, err, code end
                leases[op.expires] = lease
            end
        end
        -- body, unknown | nil, err, code, unknown, attempts used
        local body, unknown, code, maybe, used = self:exchange("/v3/kv/txn",
            self:txn_body(ops, write_id, leases), guarded and GUARDED or ONCE)
        if body then
            local succeeded, reply, rcode = txn_reply(body)
            if succeeded ~= false then return succeeded, reply, rcode end
            local currents, cerr, ccode = currents_of(reply, #ops)
            if not currents then return nil, cerr, ccode end
            if unknown then
                local verdict, index = settle(ops, currents, write_id)
                if verdict == "applied" then return true, index end
                if verdict == "unknown" then
                    return fail("timeout", "transaction: an attempt timed out or was cut, and "
                        .. "the resend's compare failed: it may have been applied")
                end
            end
            local conflicts = conflicts_of(ops, currents)
            if #conflicts == 0 then
                return fail("decode", "etcd said a compare failed, but every key is as compared")
            end
            return false, conflicts
        elseif maybe and not guarded then
            -- a create of unknown outcome: only our write id found settles it
            local currents = self:read_keys(ops, math.max(#self.endpoints, 2) - used)
            if currents then
                local verdict, index = settle(ops, currents, write_id)
                if verdict == "applied" then return true, index end
            end
            return nil, unknown, code
        elseif code == "lease" then
            for _, lease in pairs(leases) do self:forget_lease(lease) end
        else
            return nil, unknown, code
        end
    end
    return fail("http", "a lease of the transaction expired twice while writing")
end

--[[ Watches (§7): a waiter's wait for a change, pushed by the server over
a stream that stays open while the wait lasts (one create_request per thing
watched, from the revision given, or from now on: watch.lua reads what it
may have missed, since etcd delivers the events of a watch that starts in
the past only at its 100 ms sync), and closed when it ends. The revision
each watch was created at is kept (w.revision), and events that come while
the others are set up are kept for the first next().
Bounded: the server ends the stream at the wait's end (Grpc-Timeout), our
side a little after it whatever the server does, and each event is read
as one line of at most MAX_EVENT bytes. ]]

local MAX_EVENT = 4 * 1024 * 1024   -- a value (1.5 MB, §8) in base64, in JSON
local WATCH_MARGIN = 0.5            -- seconds our side waits past the server's end

local Watch = {}
Watch.__index = Watch

--- What one line of a watch stream says: "created", "events" (and the
-- events), "other" (a progress header), or "ended" and why (an error, a
-- cancel: the stream is over). Server data: anything may be in it.
local function watch_message(line, prefix)
    local msg = json.decode(line)
    if type(msg) ~= "table" then return "ended", "decode: a watch line is not JSON" end
    if msg.error ~= nil then
        local e = msg.error
        local text = type(e) == "table" and type(e.message) == "string" and e.message
            or snippet(line)
        return "ended", "watch: " .. check.printable(text)
    end
    local r = msg.result
    if type(r) ~= "table" then return "ended", "decode: a watch line without a result" end
    if r.canceled then
        return "ended", "watch canceled" .. (r.compact_revision and " (compacted)" or "")
    end
    if r.created then
        -- the revision it was created at: from the next one on, it is told at once
        return "created", type(r.header) == "table" and int(r.header.revision) or nil
    end
    local evs = list_of(r.events)
    if evs == nil then return "ended", "decode: a watch line's events are not a list" end
    if #evs == 0 then return "other" end
    local out = {}
    for i, ev in ipairs(evs) do
        local kv = type(ev) == "table" and ev.kv
        local ekey = type(kv) == "table" and type(kv.key) == "string" and unb64(kv.key)
        local index = ekey and int(kv.mod_revision)
        if not index or ekey:sub(1, #prefix) ~= prefix then
            return "ended", "decode: a watch event without a key of ours and its revision"
        end
        local e = { key = ekey:sub(#prefix + 1), index = index,
                    watch = tointeger(tonumber(r.watch_id or 0) or -1) }
        if ev.type == "DELETE" then
            e.type = "DELETE"
        elseif ev.type == nil or ev.type == "PUT" then
            e.type = "PUT"
            local original, value = read_entry(kv.mod_revision, kv.value)
            if original ~= nil then e.value = value end     -- not ours: a change all the same
        else
            return "ended", "decode: a watch event of an unknown type"
        end
        out[i] = e
    end
    return "events", out
end

--- The code of a watch that a line of the server ended: "decode" when the
-- line made no sense, "closed" when the server ended it (an error, a cancel).
local function ended_code(why)
    return why:match("^decode:") and "decode" or "closed"
end

--- watch, err, code = backend:watch(specs, seconds): starts watching, for at
-- most `seconds`; specs = array of {key = k} or {prefix = p}, each with
-- `start`, the first revision to report (left out: from now on). Tries the
-- members in turn until one has set every watch up; nil, err, code when none
-- did.
function Etcd:watch(specs, seconds)
    local parts = {}
    for i, spec in ipairs(specs) do
        local k = self.prefix .. assert(core.fold_key(spec.key or spec.prefix))
        parts[i] = ('{"create_request":{"key":"%s"%s%s}}'):format(b64(k),
            spec.prefix and (',"range_end":"%s"'):format(b64(prefix_end(k))) or "",
            spec.start and (',"start_revision":"%d"'):format(spec.start) or "")
    end
    local body = table.concat(parts, "\n")
    local headers = {}
    for k, v in pairs(self:headers()) do headers[k] = v end
    headers["Grpc-Timeout"] = ("%dm"):format(math.max(1, math.floor(seconds * 1000)))
    local n = #self.endpoints
    local w, err, code = cluster.try_in_turn(cluster.from(self.preferred, n), function(i)
        local url = self.endpoints[i]
        -- set up within a request's timeout: a member that answers nothing
        -- (paused) must not hold the whole wait
        local setup = runtime.monotime() + math.min(self.timeout, seconds)
        local s, status, detail, ecode = self:connection(url):stream("POST", url .. "/v3/watch",
            body, headers, seconds + WATCH_MARGIN, MAX_EVENT, math.min(self.timeout, seconds))
        if not s then return "next", status, detail end
        local created, revision, early = 0, 0, {}
        if status == 200 then
            while created < #specs do
                local line
                line, detail, ecode = s:read_line(math.max(0, setup - runtime.monotime()))
                if not line then break end
                local what, v = watch_message(line, self.prefix)
                if what == "created" then
                    created = created + 1
                    revision = math.max(revision, v or math.huge)
                elseif what == "events" then    -- of a spec set up already: kept
                    for _, e in ipairs(v) do early[#early + 1] = e end
                elseif what ~= "other" then
                    detail, ecode = tostring(v), ended_code(v)
                    break
                end
            end
        else
            detail, ecode = ("http: HTTP %d from the watch"):format(status), "http"
        end
        if created == #specs then
            return "answer", setmetatable({ stream = s, prefix = self.prefix,
                ends = runtime.monotime() + seconds, revision = revision,
                early = early[1] and early or nil }, Watch)
        end
        s:close()
        self.preferred = i % n + 1
        return "next", detail, ecode
    end, math.max(n, 1))
    if w then return w end
    return nil, err or "connect: no member set the watch up", code or "connect"
end

--- events | nil, err, code = watch:next(timeout): the next events (an array
-- of {type = "PUT"|"DELETE", key = k, index = revision, value = v (PUT),
-- watch = i - 1 for specs[i]}), waiting at most `timeout` seconds: code
-- "timeout" when none came; any other code means the watch is over.
function Watch:next(timeout)
    local s = self.stream
    if s == nil then return nil, "closed: the watch is over", "closed" end
    local early = self.early
    if early then
        self.early = nil
        return early
    end
    -- lines that are not events (progress headers) do not stretch `timeout`
    local until_ = runtime.monotime() + timeout
    while true do
        local line, err, code = s:read_line(math.max(0, until_ - runtime.monotime()))
        if not line then
            if code == "timeout" and runtime.monotime() >= self.ends then
                code = "closed"         -- its time is over, not merely this read's
            end
            if code ~= "timeout" then self:close() end
            return nil, err, code
        end
        local what, v = watch_message(line, self.prefix)
        if what == "events" then return v end
        if what == "ended" then
            self:close()
            return nil, v, ended_code(v)
        end
    end
end

function Watch:close()
    local s = self.stream
    self.stream = nil
    if s then s:close() end
    return true
end

Etcd.close = cluster.close

return Etcd
