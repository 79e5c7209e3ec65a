--- Handlers of examples/nginx/nginx.conf: the seed's shared printer, unique
-- emails and an operator view, as nginx endpoints. Every wait here (for the
-- printer's lock, for a busy store) is an ngx.sleep: the worker goes on
-- serving other requests meanwhile.
local cjson = require "cjson"
local cmpxchg = require "cmpxchg"

local shop = {}

local store                     -- one per worker, opened by its first request

local function reply(status, body)
    ngx.status = status
    ngx.say(cjson.encode(body))
    return ngx.exit(status)
end

local function get_store()
    if store == nil then
        local target = os.getenv("CMPXCHG_URL")
        if target == nil or target == "" then
            target = ngx.config.prefix() .. "data/cmpxchg.db"
        end
        local st, err = cmpxchg.open(target, { database = os.getenv("CMPXCHG_DATABASE") })
        if not st then return reply(503, { error = err }) end
        store = st
    end
    return store
end

--- POST /printers/NAME/print?work=SECONDS&wait=SECONDS: reserves the printer
-- as the docs' SharedResource does ({ReservedUntil}), prints, releases.
-- 200 printed; 503 busy for all of `wait`; 409 the reservation was lost.
function shop.print(printer)
    local args = ngx.req.get_uri_args()
    local work = math.min(tonumber(args.work) or 1, 60)
    local st = get_store()
    -- auto_renew: an ngx.timer writes the reservation again every ttl/3, so a
    -- job longer than the ttl keeps the printer; a crashed worker's reservation
    -- still ends within the ttl
    local reservation, err, code = st:lock("printers/" .. printer, {
        expires_field = "ReservedUntil", ttl = 10, auto_renew = true,
        timeout = tonumber(args.wait) or 5 })
    if not reservation then
        return reply(code == "timeout" and 503 or 500, { error = err })
    end
    local token = reservation:token()   -- the fencing token this job prints with
    -- try/finally: the reservation is given back however the printing ends
    local printed, why = pcall(ngx.sleep, work)
    local released, lost = reservation:release()
    if not printed then return reply(500, { error = tostring(why) }) end
    if released == false then
        return reply(409, { error = "the reservation was lost while printing: " .. lost })
    end
    return reply(200, { printed = printer, token = token, waited = reservation.waited,
                        took_over = reservation.takeovers > 0, worker = ngx.worker.pid() })
end

--- POST /users?id=ID&email=ADDRESS: the docs' unique email. The address is
-- reserved by a create-only put (index 0: one writer wins); the user is
-- saved next, and when that fails the reservation is given back by its index.
-- 201 created; 409 the address (or the id) is taken.
function shop.create_user()
    local args = ngx.req.get_uri_args()
    if type(args.id) ~= "string" or type(args.email) ~= "string" then
        return reply(400, { error = "id and email are required" })
    end
    local st = get_store()
    local email_key = "emails/" .. args.email    -- keys are case-insensitive
    local ok, index, holder = st:put(email_key, args.id, 0)
    if ok == nil then return reply(503, { error = index }) end
    if not ok then
        return reply(409, { error = ("%s is already reserved by user %s")
            :format(args.email, tostring(holder)) })
    end
    local saved, _, existing = st:put("users/" .. args.id, { Email = args.email }, 0)
    if not saved then
        st:delete(email_key, index)             -- give the address back
        return reply(409, { error = saved == false and ("user %s exists (%s)")
            :format(args.id, cjson.encode(existing)) or tostring(existing) })
    end
    return reply(201, { user = args.id, email = args.email, reservation = index })
end

--- GET /locks?prefix=P: every lock under P with owner, host, pid, token and
-- the lease left (cmpxchg.locks, as bin/cmpxchg list shows them).
function shop.locks()
    local prefix = ngx.req.get_uri_args().prefix or ""
    local locks, err = cmpxchg.locks(get_store(), prefix)
    if not locks then return reply(503, { error = err }) end
    local out = {}
    for i, l in ipairs(locks) do
        out[i] = { key = l.key, token = l.token, owner = l.owner, host = l.host, pid = l.pid,
                   expires_at = l.expires_at, remaining = l.remaining, expired = l.expired }
    end
    return reply(200, { locks = out })
end

return shop
