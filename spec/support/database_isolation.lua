--- Databases never share keys: stores opened on related database names
-- (one a prefix of another, names with "/", the default one) each write the
-- same keys, and each sees only its own items, by get and by list.
--   require("spec.support.database_isolation")(assert, open_db, names)
-- open_db(name) -> a store of database `name`.
return function(assert, open_db, names)
    local stores = {}
    for i, name in ipairs(names) do stores[i] = assert(open_db(name)) end
    -- "k" in database "shop/eu" and "eu/k" in database "shop" were one key
    -- when a database's keys lived under "<name>/"
    local keys = { "k", "eu/k", "/k" }
    for i, st in ipairs(stores) do
        for _, key in ipairs(keys) do
            local ok, _, current = st:put(key, names[i], 0)
            assert.is_true(ok, ("database '%s' found '%s' at '%s' already")
                :format(names[i], tostring(current), key))
        end
    end
    for i, st in ipairs(stores) do
        for _, key in ipairs(keys) do
            assert.equal(names[i], (st:get(key)), ("'%s' in database '%s'"):format(key, names[i]))
        end
        local seen = {}
        for _, item in ipairs(assert(st:list(""))) do
            if item.value ~= names[i] then
                seen[#seen + 1] = ("%s = %s"):format(item.key, tostring(item.value))
            end
        end
        assert.same({}, seen, ("database '%s' lists another's items"):format(names[i]))
    end
    for _, st in ipairs(stores) do
        for _, key in ipairs(keys) do
            local _, index = st:get(key)
            if index > 0 then st:delete(key, index) end
        end
        st:close()
    end
end
