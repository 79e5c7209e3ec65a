--- JSON for stored values: a private lua-cjson instance, so a user's own
-- cjson settings never change what this library writes, set to refuse rather
-- than guess (sparse arrays are errors instead of arrays padded with null).
-- the rock does not list lua-cjson (LuaRocks would not count Debian's): say
-- how to get it rather than only that a module is missing
local found, cjson_module = pcall(require, "cjson")
if not found then
    error("cmpxchg needs lua-cjson (Debian: apt-get install lua-cjson; else: luarocks "
        .. "install lua-cjson): " .. tostring(cjson_module), 0)
end
local cjson = cjson_module.new()

cjson.encode_sparse_array(false, 1, 0)  -- any hole in an array is an error
cjson.encode_invalid_numbers(false)     -- NaN and inf are errors
cjson.decode_invalid_numbers(false)

local json = {
    null = cjson.null,
}

-- Lua's memory error: raised on as it is, never taken for the value's fault
local MEMORY_ERROR = "not enough memory"

--- value -> JSON text, or nil and why it cannot be encoded.
function json.encode(value)
    local ok, text = pcall(cjson.encode, value)
    if ok then return text end
    if text == MEMORY_ERROR then error(text, 0) end
    text = tostring(text):gsub("^Cannot serialise", "cannot encode")
    if text:find("excessive nesting", 1, true) then
        text = text .. " (a table that contains itself?)"
    end
    return nil, text
end

--- JSON text -> value, or nil and the parser's complaint.
function json.decode(text)
    local ok, value = pcall(cjson.decode, text)
    if ok then return value end
    if value == MEMORY_ERROR then error(value, 0) end
    return nil, tostring(value)
end

return json
