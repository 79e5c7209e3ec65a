-- The docs' unique-email reservation: a user may only be saved with an address no one
-- else holds. The address is reserved first with a compare-exchange create (index 0),
-- which only one writer can win; the user is saved next; when that fails the
-- reservation is given back, by the index it was made with, so it is never left behind.
--
--   lua5.4 examples/email_reservation.lua --email ADDR --user ID --name NAME
--                                         [--fail-save] [--store PATH]
-- Exit: 0 reserved and saved, 1 address already taken, 2 save failed (rolled back),
--       3 the store failed.

-- run from the checkout without installing: prefer the in-tree build
package.path = "./lua/?.lua;./lua/?/init.lua;" .. package.path
package.cpath = "./?.so;" .. package.cpath

local cmpxchg = require "cmpxchg"

local finish = require("examples.flags").finish

local flags, bad = require("examples.flags").parse(arg, { store = "string", email = "string",
    user = "string", name = "string", ["fail-save"] = "switch" })
if not flags then finish(3, bad) end
if not (flags.email and flags.user) then finish(3, "--email and --user are required") end
local name = flags.name or flags.user

local store, err = cmpxchg.open(flags.store)
if not store then finish(3, err) end

-- Keys are case-insensitive, exactly as on RavenDB, so "Ann@X.org" and "ann@x.org"
-- compete for one reservation without lower-casing anything here.
local email_key = "emails/" .. flags.email

-- 1. Reserve: index 0 means "create only". Losing is not an error: put returns false
-- with the current value, which is the id of the user who holds the address.
local reserved, index, holder = store:put(email_key, flags.user, 0)
if reserved == nil then finish(3, index) end
if not reserved then
    store:close()
    finish(1, ("refused: %s is already reserved by user %s (index %d)")
        :format(flags.email, tostring(holder), index))
end
print(("reserved %s for user %s (index %d)"):format(flags.email, flags.user, index))

-- 2. Save the user. Create-only again, so an existing user id is a failed save too.
local saved, why
if flags["fail-save"] then
    saved, why = false, "simulated failure (--fail-save)"
else
    local user_index
    saved, user_index = store:put("users/" .. flags.user,
        { Name = name, Email = flags.email }, 0)
    if saved == nil then
        why = user_index
    elseif not saved then
        why = "users/" .. flags.user .. " already exists"
    else
        print(("saved users/%s (index %d)"):format(flags.user, user_index))
    end
end
if saved then
    store:close()
    finish(0, "done")
end

-- 3. Roll back: delete by the reservation's index, so that if the address has changed
-- hands meanwhile (say an operator freed and someone re-took it) we leave it alone.
print("saving the user failed: " .. why)
local deleted, current = store:delete(email_key, index)
store:close()
if deleted == nil then finish(3, "rollback failed, reservation left behind: " .. current) end
if not deleted then
    finish(2, ("rollback skipped: %s is no longer ours (now index %d)")
        :format(email_key, current))
end
finish(2, "rolled back: " .. flags.email .. " is free again")
