--- The one place where a waiter waits for the store to change: a lock, a
-- permit, a fair queue or an election that finds what it wants taken calls
-- wait.change and then looks again.
--
-- Today every backend is polled: the wait is a sleep (through the runtime
-- seam, so it yields inside nginx) of the length the caller chose (its
-- backoff, cut short where a lease it saw ends). A backend that can push
-- (etcd's watch, a local wake-up when a request of the same nginx worker
-- releases) can end the wait early here, when `what` changes after index
-- `since`; the callers look again either way, so nothing else changes.
local runtime = require "cmpxchg.runtime"

local wait = {}

--[[ wait.change(st, what, since, seconds) -> true when a change was seen (a
pushed notice), nil when the time merely passed. `st` is the store;
`what` the key ("k") or the prefix ({prefix = "k/waiters/"}) or a list of
either ({ "k", {prefix = "k/waiters/"} }) whose change ends the wait; `since`
the highest index the caller has seen of them (0: none), so that a watch
starts after it and misses nothing; `seconds` the longest wait. ]]
function wait.change(st, what, since, seconds)     -- luacheck: ignore 212
    runtime.sleep(seconds)
    return nil
end

return wait
