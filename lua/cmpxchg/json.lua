--- JSON for stored values: a private lua-cjson instance, so a user's own
-- cjson settings never change what this library writes, set to refuse rather
-- than guess (sparse arrays are errors instead of arrays padded with null).
local cjson = require("cjson").new()

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

-- marks carry a random part, so that no key or value can spell one
local NONCE = require("cmpxchg.core").uuid():gsub("%-", "")

--- A mark for a template slot, to put in a value before encoding it.
function json.mark(name)
    return ("@@cmpxchg:%s_%s@@"):format(name, NONCE)
end

--- JSON `text` as a template of csrc/renew.c: its pieces, with each mark
-- found in it (json.mark, a key of `slots`) replaced by that slot's parts
-- (an array, spliced in). Other text that looks like a mark stays text.
function json.template(text, slots)
    local parts, pos = {}, 1
    while true do
        local a, b, mark = text:find("(@@cmpxchg:[%w_]+@@)", pos)
        if not a then break end
        if slots[mark] then
            parts[#parts + 1] = text:sub(pos, a - 1)
            for _, part in ipairs(slots[mark]) do parts[#parts + 1] = part end
            pos = b + 1
        else
            parts[#parts + 1] = text:sub(pos, b)
            pos = b + 1
        end
    end
    parts[#parts + 1] = text:sub(pos)
    return parts
end

return json
