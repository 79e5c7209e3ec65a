--- RavenDB documents, the few calls a reservation needs beside its
-- compare-exchange items: store:get_document (a document and its change
-- vector, to write it again in a transaction) and store:query (RQL, such as
-- the docs' `from Users where id() == cmpxchg($key)`). Documents are
-- RavenDB's: on the other backends these calls raise, as misuse does.
-- A backend that has documents sets `documents` and implements
--   get_document(id)          -> document (with its @metadata), change vector
--                                | nil when absent
--   query(rql, params_json)   -> array of documents (with their @metadata)
local check = require "cmpxchg.check"
local json = require "cmpxchg.json"
local store = require "cmpxchg.store"

local argerror = check.argerror

local documents = {}

--- The backend of `st`, raising when it has no documents.
local function backend_of(st, fname)
    local backend = store.enter(st, fname)
    if not backend.documents then
        argerror(1, fname, ("a RavenDB store expected, got %s: documents and RQL queries are "
            .. "RavenDB's"):format(backend:describe()))
    end
    return backend
end

--- document, change_vector = store:get_document(id); absent: nil.
function documents.get(st, id)
    local backend = backend_of(st, "get_document")
    check.type(id, "string", 1, "get_document")
    if id:find("^%s*$") or id:find("\0", 1, true) or #id > 2048 then
        argerror(1, "get_document", "id must be 1 to 2048 bytes, not blank, without NUL bytes")
    end
    return backend:get_document(id)
end

--- results = store:query(rql [, params]): the documents an RQL query
-- returns, each with its @metadata (@id, @collection, @change-vector).
function documents.query(st, rql, params)
    local backend = backend_of(st, "query")
    check.type(rql, "string", 1, "query")
    if rql:find("^%s*$") then argerror(1, "query", "the query must not be blank") end
    local text = "null"
    if params ~= nil then
        check.type(params, "table", 2, "query")
        for k in pairs(params) do
            if type(k) ~= "string" or k == "" then
                argerror(2, "query", "parameters are named: string keys expected, got "
                    .. tostring(k))
            end
        end
        if next(params) ~= nil then
            local err
            text, err = json.encode(params)
            if text == nil then argerror(2, "query", err) end
        end
    end
    return backend:query(rql, text)
end

return documents
