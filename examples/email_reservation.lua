-- The docs' unique-email reservation: a user may only be saved with an address no one
-- else holds. The address is reserved first with a compare-exchange create (index 0),
-- which only one writer can win; the user is saved next; when that fails the
-- reservation is given back, by the index it was made with.
--
-- A process can also die between the steps (killed, a crash, a lost machine), and then
-- nobody gives the reservation back: the address stays taken by a user who does not
-- exist. So a reservation is made *pending* ({"User": id, "Pending": true}) and
-- confirmed, once the user is saved, by a CAS on its index to the plain user id (the
-- docs' value). `--reconcile` finds the pending ones: when the user was saved with
-- that address (the process died just before confirming) it confirms them, else it
-- deletes them, each by the index it read, so a reservation that moved on meanwhile
-- is left alone. It is safe to run while sign-ups are in flight: one whose pending
-- reservation was deleted under it finds out when it confirms, and reserves again or,
-- when someone else took the address meanwhile, removes the user it saved.
--
--   lua5.4 examples/email_reservation.lua --email ADDR --user ID [--name NAME]
--        [--fail-save] [--pause-after reserved|saved --go FILE] [--store T] [--database DB]
--   lua5.4 examples/email_reservation.lua --reconcile [--store T] [--database DB]
--   lua5.4 examples/email_reservation.lua --atomic --email ADDR --user ID [--name NAME]
--        [--pause-after prepared|committed --go FILE] [--store T] [--database DB]
-- TARGET: a store file, a RavenDB URL or an etcd URL (those need --database).
--
-- --atomic: the reservation and the user in ONE transaction (store:transaction), so no
-- failure between the steps can leave one without the other: nothing to give back, nothing
-- to reconcile. On RavenDB the user is a document of the collection Users, written in the
-- cluster-wide transaction beside the item (its atomic guard refuses a second create), and
-- it is then found with the docs' own RQL, `from Users where id() == cmpxchg($key)`; on etcd
-- and the embedded store the user record is an item "users/ID" of the same transaction.
-- The reservation's value is the user's id "users/ID" either way. Exit: 0 reserved and
-- saved (or an earlier run did it), 1 address taken, 2 user id taken, 3 the store failed
-- (a transaction whose outcome stays unknown says so: run again to find out).
-- --pause-after stops after that step, printing "paused after STEP (pid N)", until FILE
-- exists (at most 60 s): a window in which to kill the process, or to reconcile.
-- Exit: 0 reserved and saved (or reconciled), 1 address already taken, 2 save failed
--       (rolled back), 3 the store failed.

-- run from the checkout without installing: prefer the in-tree build
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

local cmpxchg = require "cmpxchg"
local core = require "cmpxchg.core"

local finish = require("examples.flags").finish

local flags, bad = require("examples.flags").parse(arg, { store = "string",
    database = "string", email = "string", user = "string", name = "string",
    ["fail-save"] = "switch", reconcile = "switch", ["pause-after"] = "string",
    go = "string", atomic = "switch" })
if not flags then finish(3, bad) end

local store, err = cmpxchg.open(flags.store, { database = flags.database })
if not store then finish(3, err) end

local function done(code, message)
    store:close()
    finish(code, message)
end

local PREFIX = "emails/"

--- Who holds a reservation, for messages.
local function holder(value)
    if type(value) == "table" then
        return tostring(value.User) .. " (not yet confirmed)"
    end
    return tostring(value)
end

--[[ reconcile: confirm or delete every pending reservation. ]]
if flags.reconcile then
    local items, why = store:list(PREFIX)
    if not items then done(3, why) end
    local n = { removed = 0, confirmed = 0, kept = 0, changed = 0 }
    for _, item in ipairs(items) do
        local v = item.value
        if type(v) == "table" and v.Pending and type(v.User) == "string" then
            local address = item.key:sub(#PREFIX + 1)
            local user, user_index = store:get("users/" .. v.User)
            if type(user_index) ~= "number" then done(3, user_index) end
            local ok, action, idx, code
            if type(user) == "table" and type(user.Email) == "string"
                    and user.Email:lower() == address:lower() then
                -- saved, then died before confirming: finish its work
                ok, idx, code = store:put(item.key, v.User, item.index)
                action = "confirmed"
            else
                ok, idx, code = store:delete(item.key, item.index)
                action = "removed"
            end
            if ok == nil then done(3, ("%s: %s (%s)"):format(item.key, idx, code)) end
            if not ok then action = "changed" end
            n[action] = n[action] + 1
            print(("reconcile: %s %s (user %s, index %d)"):format(item.key,
                action == "changed" and "changed meanwhile, left alone" or action,
                v.User, item.index))
        else
            n.kept = n.kept + 1
        end
    end
    done(0, ("reconcile: %d removed, %d confirmed, %d changed meanwhile, %d kept")
        :format(n.removed, n.confirmed, n.changed, n.kept))
end

if not (flags.email and flags.user) then done(3, "--email and --user are required") end
local name = flags.name or flags.user
local pause_step = flags["pause-after"]
local steps = flags.atomic and { prepared = true, committed = true }
    or { reserved = true, saved = true }
if pause_step and not (steps[pause_step] and flags.go) then
    done(3, ("--pause-after takes %s, and needs --go FILE")
        :format(flags.atomic and "prepared or committed" or "reserved or saved"))
end

local function pause_after(step)
    if pause_step ~= step then return end
    print(("paused after %s (pid %d)"):format(step, core.pid()))
    io.stdout:flush()
    require("examples.flags").wait_for_file(flags.go)
end

-- Keys are case-insensitive, exactly as on RavenDB, so "Ann@X.org" and "ann@x.org"
-- compete for one reservation without lower-casing anything here.
local email_key = PREFIX .. flags.email
local user_key = "users/" .. flags.user

--[[ --atomic: one transaction, then the user found by its email. ]]
if flags.atomic then
    local user = { Name = name, Email = flags.email }
    -- documents are RavenDB's: a RavenDB target is an http(s):// URL
    local documents = (flags.store or os.getenv("CMPXCHG_URL") or ""):lower():match("^https?://")
        ~= nil
    local ops = {
        -- index 0: create only, as in step 1 below; the value is the user's id
        { op = "put", key = email_key, value = user_key, index = 0 },
        documents and { op = "put_document", id = user_key, collection = "Users", document = user }
            or { op = "put", key = user_key, value = user, index = 0 },
    }
    pause_after("prepared")
    local ok, index = store:transaction(ops)
    if ok == nil then
        done(3, ("the transaction failed: %s (if its outcome is unknown, run again: an earlier "
            .. "run that took the address is reported as done)"):format(index))
    end
    if not ok then
        for _, c in ipairs(index) do        -- false: the conflicts
            if c.key == email_key then
                if c.value == user_key then
                    -- an earlier run of this very sign-up: its user came with it
                    print(("%s is already reserved for %s (by an earlier run)")
                        :format(flags.email, user_key))
                    done(0, "done")
                end
                done(1, ("refused: %s is already reserved by %s (index %d); nothing written")
                    :format(flags.email, tostring(c.value or "of a later write"), c.index))
            end
        end
        done(2, ("refused: %s already exists; nothing written, %s is still free")
            :format(user_key, flags.email))
    end
    print(("reserved %s and saved %s in one transaction (index %d)")
        :format(flags.email, user_key, index))
    pause_after("committed")
    -- find the user by the address, as the docs do
    local found
    if documents then
        local results, qerr = store:query("from Users where id() == cmpxchg($key)",
            { key = email_key })
        if not results then done(3, "the query failed: " .. qerr) end
        found = results[1] and results[1]["@metadata"]["@id"]
        print(("found %s by its email with RQL (from Users where id() == cmpxchg($key))")
            :format(tostring(found)))
    else
        local id, why = store:get(email_key)
        if id == nil and type(why) == "string" then done(3, why) end
        local record = id and store:get(id)
        found = type(record) == "table" and record.Email == flags.email and id or nil
        print(("found %s by its email"):format(tostring(found)))
    end
    if found == nil or found:lower() ~= user_key:lower() then
        done(3, "the user saved with the reservation was not found by its email")
    end
    done(0, "done")
end

-- 1. Reserve, pending: index 0 means "create only". Losing is not an error: put
-- returns false with the current value, which names the user who holds the address.
local reserved, index, current = store:put(email_key, { User = flags.user, Pending = true }, 0)
if reserved == nil then done(3, index) end
if not reserved then
    done(1, ("refused: %s is already reserved by user %s (index %d)")
        :format(flags.email, holder(current), index))
end
print(("reserved %s for user %s (index %d)"):format(flags.email, flags.user, index))
pause_after("reserved")

-- 2. Save the user. Create-only again, so an existing user id is a failed save too.
local saved, why, user_index
if flags["fail-save"] then
    saved, why = false, "simulated failure (--fail-save)"
else
    saved, user_index = store:put(user_key, { Name = name, Email = flags.email }, 0)
    if saved == nil then
        why = user_index
    elseif not saved then
        why = user_key .. " already exists"
    else
        print(("saved %s (index %d)"):format(user_key, user_index))
    end
end

if not saved then
    -- Roll back: delete by the reservation's index, so that if the address has changed
    -- hands meanwhile (reconciled away and taken by someone else) we leave it alone.
    print("saving the user failed: " .. why)
    local deleted, now_index = store:delete(email_key, index)
    if deleted == nil then
        done(3, "rollback failed, reservation left behind (reconcile removes it): " .. now_index)
    end
    if not deleted then
        done(2, ("rollback skipped: %s is no longer ours (now index %d)")
            :format(email_key, now_index))
    end
    done(2, "rolled back: " .. flags.email .. " is free again")
end
pause_after("saved")

-- 3. Confirm: the pending reservation becomes the plain user id, by CAS on its index.
local confirmed, now_index, now_value = store:put(email_key, flags.user, index)
if confirmed == nil then
    done(3, "confirming failed (reconcile confirms it): " .. now_index)
end
if not confirmed and now_value == flags.user then
    confirmed = true                    -- a reconcile confirmed it for us
elseif not confirmed and now_index == 0 then
    -- a reconcile removed it as if we had died: reserve again, confirmed this time
    print(("the reservation of %s was removed meanwhile; reserving again"):format(flags.email))
    confirmed, now_index, now_value = store:put(email_key, flags.user, 0)
    if confirmed == nil then
        done(3, ("reserving again failed; %s is saved without a reservation: %s")
            :format(user_key, now_index))
    end
end
if not confirmed then
    -- someone else holds the address now: our user cannot keep it
    local removed, removed_why = store:delete(user_key, user_index)
    if removed == nil then
        done(3, ("%s was taken meanwhile, and removing %s failed: %s")
            :format(flags.email, user_key, removed_why))
    end
    done(1, ("refused: %s was reserved meanwhile by user %s (index %d); %s removed")
        :format(flags.email, holder(now_value), now_index, user_key))
end
print(("confirmed %s for user %s"):format(flags.email, flags.user))
done(0, "done")
