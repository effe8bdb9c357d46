-- gifts: storing an import (whole, or in chunks), listing and deleting
-- imports, and the imports a crash left half-stored. Required once the
-- schema is migrated.

local fiber = require('fiber')
local log = require('log')
local schema = require('gifts.schema')
local relation = require('gifts.relation')
local locks = require('gifts.locks')

local F, I = schema.F, schema.I
local id_key, relation_error, pacer = relation.id_key, relation.relation_error, relation.pacer
local imports = box.space.imports
local citizens = box.space.citizens
local keys = box.space.idempotency_keys
local presents = box.space.presents
local town_years = box.space.town_years
local town_picks = box.space.town_picks
local year_births = schema.year_births
local import_seq = box.sequence.import_id

local M = {}
-- The stored procedures: gifts_* by name.
local P = {}
M.procedures = P

-- Rows per transaction when a big import is stored or cleaned up in chunks.
local CHUNK = 10000

-- An import clients may see: stored whole (not still arriving in chunks).
function M.visible(import_id)
    local import = imports:get(import_id)
    if import == nil or import[I.state] ~= nil then
        return nil
    end
    return import
end
local visible = M.visible

-- Imports stored before the summary whose rows the app has not sent yet
-- (migration 4 lists them): their analytics and PATCHes answer
-- "unavailable" (503, retried) until gifts_backfill_rows takes them off the
-- list. One meta:get when the list is gone, as it is but after an upgrade.
function M.summary_pending(import_id)
    local row = box.space.meta:get('summary_pending')
    if row == nil then
        return false
    end
    for _, id in ipairs(row[2]) do
        if id == import_id then
            return true
        end
    end
    return false
end

-- Raised by a read of an import in summary_pending: the app answers 503.
function M.refuse_pending(import_id)
    if M.summary_pending(import_id) then
        error(string.format('gifts_unavailable: the summary of import %d is being filled after an upgrade', import_id))
    end
end

-- An idempotency key's import: 'new' (no such key), 'same' (same body: the
-- import stored with it) or 'key_reused' (another body).
local function key_state(key, hash)
    if key == nil or key == box.NULL then
        return 'new'
    end
    local stored = keys:get(key)
    if stored == nil then
        return 'new'
    end
    return stored[2] == hash and 'same' or 'key_reused', stored[3]
end

-- The summary rows the app computed for citizens (schema.lua's summary),
-- stored for an import: presents {month, citizen_id, presents} and births
-- {town, yyyy, {mmdd, citizens, ...}}. Cheap checks only: a presents row names one of
-- `by_id`'s citizens (when given); the rows' types are the spaces' formats.
function M.summary_error(presents_rows, by_id)
    for _, p in ipairs(presents_rows) do
        if p[1] < 1 or p[1] > 12 or p[3] < 1 then
            return string.format('presents row of citizen %s: month %s, presents %s', tostring(p[2]), tostring(p[1]), tostring(p[3]))
        end
        if by_id ~= nil and by_id[id_key(p[2])] == nil then
            return string.format('presents row of citizen %s, who is not in the rows sent with it', tostring(p[2]))
        end
    end
    return nil
end

-- Stores town years rows {town, yyyy, dates} with `put` (a space's insert
-- or replace), and each town's picks as not known yet (schema.lua, 9).
function M.store_births(import_id, births, put)
    local town = nil
    for _, b in ipairs(births) do
        put(town_years, { import_id, b[1], b[2], b[3] })
        if b[1] ~= town then
            town = b[1]
            town_picks:replace({ import_id, town, '' })
        end
    end
end

local function store_summary(import_id, presents_rows, births)
    for _, p in ipairs(presents_rows) do
        presents:insert({ import_id, p[1], p[2], p[3] })
    end
    M.store_births(import_id, births, town_years.insert)
end
local summary_error = M.summary_error

-- Stores a validated, symmetric import in one transaction, with the summary
-- rows the app computed for it. rows: citizen tuples whose first field
-- (import_id) is a placeholder 0:
-- {0, citizen_id, town, street, building, apartment, name, birth_date, gender, relatives};
-- filling it in place saves building a second table per citizen.
-- presents_rows, births: as store_summary takes them. key, hash: an
-- idempotency key and the body's hash, or nil. name, digest: the import's
-- name (or nil) and the body's SHA-256 in hex, kept for the import list. The relation check yields
-- on a big import (no transaction is open yet); the app sends an import
-- here only when its writes are small, and bigger ones in chunks.
-- Returns status, import id: 'ok' (stored now), 'same' (the key's import),
-- 'key_reused' (the key's import, another body), or 'invalid', reason.
function P.gifts_create_import(rows, presents_rows, births, key, hash, name, digest)
    local by_id = {}
    local ids = {}
    for i, r in ipairs(rows) do
        local id = r[F.citizen_id]
        if by_id[id_key(id)] ~= nil then
            return 'invalid', string.format('citizen %s appears twice', tostring(id))
        end
        by_id[id_key(id)] = r[F.relatives]
        ids[i] = id
    end
    local reason = relation_error(ids, function(id) return by_id[id_key(id)] end, pacer())
        or summary_error(presents_rows, by_id)
    if reason ~= nil then
        return 'invalid', reason
    end
    local born = 0
    for _, b in ipairs(births) do
        born = born + year_births(b[3])
    end
    if born ~= #rows then
        return 'invalid', string.format('town births count %d citizens, the import has %d', born, #rows)
    end
    return box.atomic(function()
        local state, existing = key_state(key, hash)
        if state ~= 'new' then
            return state, existing
        end
        local import_id = import_seq:next()
        imports:insert({ import_id, 1, os.time(), box.NULL, #rows, name, digest })
        for _, r in ipairs(rows) do
            r[F.import_id] = import_id
            citizens:insert(r)
        end
        store_summary(import_id, presents_rows, births)
        if key ~= nil and key ~= box.NULL then
            keys:insert({ key, hash, import_id })
        end
        return 'ok', import_id
    end)
end

-- A big import arrives in chunks so that no single transaction (and WAL
-- write) holds everyone else up: begin (an invisible import), chunks of
-- rows, then commit, which checks the whole relation and makes the import
-- visible in one small transaction. Until then reads and patches do not see
-- it; what a crash leaves behind is deleted at the next start.

-- Returns 'ok', new import id; or 'same'/'key_reused', the key's import.
-- name, digest: as for gifts_create_import.
function P.gifts_import_begin(key, hash, name, digest)
    return box.atomic(function()
        local state, existing = key_state(key, hash)
        if state ~= 'new' then
            return state, existing
        end
        local import_id = import_seq:next()
        imports:insert({ import_id, 0, os.time(), 'loading', 0, name, digest })
        return 'ok', import_id
    end)
end

-- Adds rows (as for gifts_create_import), the presents rows of those
-- citizens, and town years rows (of any citizens of the import), to a
-- loading import, in one transaction. Returns 'ok', or 'invalid', reason
-- (an import that is not loading, a presents row of another citizen). A
-- citizen or a town's year sent twice fails on the primary key and rolls
-- the chunk back.
function P.gifts_import_chunk(import_id, rows, presents_rows, births)
    local import = imports:get(import_id)
    if import == nil or import[I.state] ~= 'loading' then
        return 'invalid', string.format('import %d is not loading', import_id)
    end
    local by_id = {}
    for _, r in ipairs(rows) do
        by_id[id_key(r[F.citizen_id])] = true
    end
    local reason = summary_error(presents_rows, by_id)
    if reason ~= nil then
        return 'invalid', reason
    end
    box.atomic(function()
        for _, r in ipairs(rows) do
            r[F.import_id] = import_id
            citizens:insert(r)
        end
        store_summary(import_id, presents_rows, births)
    end)
    return 'ok', box.NULL
end

-- Deletes an import's rows from each space in chunks, yielding between
-- them, then the import.
local function delete_import(import_id)
    for _, space in ipairs({ citizens, presents, town_years, town_picks }) do
        local parts = space.index.primary.parts
        while true do
            local batch = space:select({ import_id }, { limit = CHUNK })
            if #batch == 0 then
                break
            end
            box.atomic(function()
                for _, t in ipairs(batch) do
                    local key = {}
                    for i = 1, #parts do
                        key[i] = t[parts[i].fieldno]
                    end
                    space:delete(key)
                end
            end)
        end
    end
    imports:delete(import_id)
end

-- Checks a loading import (its relation, and that its town births count
-- its citizens) in chunks that yield, and makes it visible with its
-- idempotency key. Returns 'ok', import id; 'same' or 'key_reused', the
-- key's import (another request stored the key first: this one is
-- dropped); or 'invalid', reason (the import is dropped).
function P.gifts_import_commit(import_id, key, hash)
    local import = imports:get(import_id)
    if import == nil or import[I.state] ~= 'loading' then
        return 'invalid', string.format('import %d is not loading', import_id)
    end
    imports:update(import_id, { { '=', I.state, 'verifying' } }) -- no more chunks
    local reason
    local after = nil
    local count = 0
    local pace = pacer()
    while reason == nil do
        local ids = {}
        local from = after and { import_id, after } or { import_id }
        for _, c in citizens:pairs(from, { iterator = after and 'GT' or 'GE' }) do
            if c[F.import_id] ~= import_id or #ids == CHUNK then
                break
            end
            ids[#ids + 1] = c[F.citizen_id]
        end
        if #ids == 0 then
            break
        end
        reason = relation_error(ids, function(id)
            local c = citizens:get({ import_id, id })
            return c and c[F.relatives]
        end, pace)
        after = ids[#ids]
        count = count + #ids
        fiber.yield()
    end
    if reason == nil then
        local born = 0
        local from, iterator = { import_id }, 'GE'
        while true do
            local batch = town_years:select(from, { iterator = iterator, limit = CHUNK })
            local n = 0
            for _, b in ipairs(batch) do
                if b[1] ~= import_id then
                    break
                end
                born = born + year_births(b[4])
                n = n + 1
                from = { import_id, b[2], b[3] }
            end
            if n < CHUNK then
                break
            end
            iterator = 'GT'
            fiber.yield()
        end
        if born ~= count then
            reason = string.format('town births count %d citizens, the import has %d', born, count)
        end
    end
    if reason ~= nil then
        delete_import(import_id)
        return 'invalid', reason
    end
    -- No yield between this check and the transaction below: nobody can
    -- store the key in between.
    local state, existing = key_state(key, hash)
    if state ~= 'new' then
        delete_import(import_id)
        return state, existing
    end
    box.atomic(function()
        imports:update(import_id, { { '=', I.version, 1 }, { '=', I.state, box.NULL }, { '=', I.citizens, count } })
        if key ~= nil and key ~= box.NULL then
            keys:insert({ key, hash, import_id })
        end
    end)
    return 'ok', import_id
end

-- Up to `limit` visible imports older than `before` (or the newest), newest
-- first, only those with `digest` if given (by its index):
-- {import_id, citizens, created_at, version, name, digest} each.
function P.gifts_list_imports(limit, before, digest)
    local out = {}
    local given = before ~= nil and before ~= box.NULL
    local index, from, iterator = imports.index.primary, before, 'LT'
    if digest ~= nil and digest ~= box.NULL then
        -- The digest index holds {digest, import_id}: newest first from
        -- the end of the digest's run (or from `before` in it).
        index, from, iterator = imports.index.digest, { digest, before }, 'LT'
        if not given then
            from, iterator = { digest }, 'REQ'
        end
    elseif not given then
        from, iterator = nil, 'REQ'
    end
    for _, import in index:pairs(from, { iterator = iterator }) do
        if #out >= limit or (digest ~= nil and digest ~= box.NULL and import[I.digest] ~= digest) then
            break
        end
        if import[I.state] == nil then
            -- box.NULL, not nil, for a missing name or digest: a nil would
            -- end the array early (imports stored before schema 8 have neither).
            local name, digest_of = import[I.name], import[I.digest]
            out[#out + 1] = {
                import[I.import_id], import[I.citizens] or 0, import[I.created_at] or 0, import[I.version],
                name == nil and box.NULL or name, digest_of == nil and box.NULL or digest_of,
            }
        end
    end
    return out
end

-- Deletes a visible import: it disappears for everyone in one small
-- transaction (with its idempotency keys), then its citizens go in chunks
-- (a crash in between leaves an invisible import that the next start
-- deletes). Returns 'ok' or 'not_found'.
function P.gifts_delete_import(import_id)
    -- Not in the middle of a long PATCH of it (locks.lua); no yield between
    -- here and the transaction.
    locks.wait_idle(import_id)
    local gone = box.atomic(function()
        if visible(import_id) == nil then
            return false
        end
        imports:update(import_id, { { '=', I.state, 'deleting' } })
        for _, key in keys.index.import:pairs({ import_id }) do
            keys:delete(key[1])
        end
        return true
    end)
    if not gone then
        return 'not_found'
    end
    delete_import(import_id)
    return 'ok'
end

-- How many visible imports and citizens there are (no citizen is read),
-- and how many citizen tuples the space holds (visible or not).
function P.gifts_totals()
    local count, citizens = 0, 0
    for _, import in imports:pairs() do
        if import[I.state] == nil then
            count = count + 1
            citizens = citizens + (import[I.citizens] or 0)
        end
    end
    return count, citizens, box.space.citizens:len()
end

-- Imports a crash (or a full disk) left half-stored are deleted, in
-- chunks. A delete that fails (the disk still full) must not stop the
-- start, which serves reads: it is tried again every 10 s, in a fiber.
function M.delete_leftovers()
    local leftovers = {}
    for _, import in imports:pairs() do
        if import[I.state] ~= nil then
            leftovers[#leftovers + 1] = import[I.import_id]
        end
    end
    local function delete_them()
        while #leftovers > 0 do
            local import_id = leftovers[#leftovers]
            log.info('gifts: deleting import %d, left half-stored by a crash', import_id)
            local ok, err = pcall(delete_import, import_id)
            if ok then
                leftovers[#leftovers] = nil
            else
                log.warn('gifts: could not delete import %d yet (%s); trying again in 10 s', import_id, tostring(err))
                return false
            end
        end
        return true
    end
    if not delete_them() then
        fiber.create(function()
            repeat
                fiber.sleep(10)
            until delete_them()
        end)
    end
end

return M
