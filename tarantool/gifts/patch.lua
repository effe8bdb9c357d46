-- gifts: a PATCH of one citizen, and several in one transaction.

local log = require('log')
local schema = require('gifts.schema')
local relation = require('gifts.relation')
local stored = require('gifts.imports')

local F, I, month_of, date_key = schema.F, schema.I, schema.month_of, schema.date_key
local id_key, strictly_ascending, contains = relation.id_key, relation.strictly_ascending, relation.contains
local list_with, list_without = relation.list_with, relation.list_without
local visible, summary_pending = stored.visible, stored.summary_pending
local imports = box.space.imports
local citizens = box.space.citizens
local presents = box.space.presents
local town_births = box.space.town_births

-- The stored procedures: gifts_* by name.
local P = {}

-- Patches one citizen. changes: map of field name -> new value (not relatives);
-- relatives: new ascending list, or nil to keep it.
-- Returns status, citizen tuple or nil, unknown relative id or nil, the
-- import's version after the write or nil, and a reason or nil; status is
-- 'ok', 'import_not_found', 'citizen_not_found', 'unknown_relative' or
-- 'invalid' (a call the app would never make: the reason says what).
-- Everything is checked before anything is written, so a refused patch
-- writes nothing, inside a transaction or not.
local function patch_citizen(import_id, citizen_id, changes, relatives)
    if visible(import_id) == nil then
        return 'import_not_found', box.NULL, box.NULL, box.NULL, box.NULL
    end
    if summary_pending(import_id) then
        return 'unavailable', box.NULL, box.NULL, box.NULL, 'the summary of the import is being filled after an upgrade'
    end
    local citizen = citizens:get({ import_id, citizen_id })
    if citizen == nil then
        return 'citizen_not_found', box.NULL, box.NULL, box.NULL, box.NULL
    end
    local ops = {}
    for name, value in pairs(changes or {}) do
        local field = F[name]
        if field == nil or field <= F.citizen_id or field == F.relatives then
            return 'invalid', box.NULL, box.NULL, box.NULL, 'field ' .. tostring(name) .. ' cannot be patched'
        end
        ops[#ops + 1] = { '=', field, value }
    end
    -- The town births rows that move: one citizen fewer on the old
    -- (town, date), one more on the new. Checked before anything is written.
    local was_town, was_born = citizen[F.town], citizen[F.birth_date]
    local is_town, is_born = was_town, was_born
    if changes ~= nil and changes ~= box.NULL then
        is_town = changes.town or was_town
        is_born = changes.birth_date or was_born
    end
    local births_moved = was_town ~= is_town or was_born ~= is_born
    -- Which relatives leave, join or stay: one merge of the two ascending
    -- lists (no per-id sets: a citizen may have 100,000 relatives).
    local old_list = citizen[F.relatives]
    local new_list = old_list
    if relatives ~= nil and relatives ~= box.NULL then
        if not strictly_ascending(relatives) then
            return 'invalid', box.NULL, box.NULL, box.NULL, 'relatives not ascending and unique'
        end
        new_list = relatives
    end
    local gone, joined, kept = {}, {}, {}
    if new_list ~= old_list then
        local i, j = 1, 1
        while i <= #old_list or j <= #new_list do
            local o, n = old_list[i], new_list[j]
            if n == nil or (o ~= nil and o < n) then
                gone[#gone + 1] = o
                i = i + 1
            elseif o == nil or n < o then
                joined[#joined + 1] = n
                j = j + 1
            else
                kept[#kept + 1] = o
                i, j = i + 1, j + 1
            end
        end
    else
        kept = old_list
    end
    -- The decisions of the app's domain::patch::plan, which SQLite and
    -- PostgreSQL apply (the storage contract suite holds this to it):
    -- a dropped relative loses this citizen, an added one gains it, the
    -- citizen's own id is never mirrored. Everything is checked before
    -- anything is written; an unknown added relative (the lowest) wins
    -- over a dropped one that is missing, which means a broken relation.
    local others = {}
    for _, r in ipairs(joined) do
        if r ~= citizen_id then
            local other = citizens:get({ import_id, r })
            if other == nil then
                return 'unknown_relative', box.NULL, r, box.NULL, box.NULL
            end
            others[#others + 1] = other
        end
    end
    for _, r in ipairs(gone) do
        if r ~= citizen_id then
            local other = citizens:get({ import_id, r })
            if other == nil then
                return 'missing_relative', box.NULL, r, box.NULL, box.NULL
            end
            others[#others + 1] = other
        end
    end
    -- A broken store after the refusals, in the app's order (domain::patch).
    if births_moved and town_births:get({ import_id, was_town, date_key(was_born) }) == nil then
        return 'invalid', box.NULL, box.NULL, box.NULL, 'the stored dates of town ' .. was_town .. ' are corrupt'
    end
    -- How the presents rows change (the app's domain::patch::plan):
    -- the citizen's own row by the relatives that join or leave it (and its
    -- own month if it lists itself), each relative's by this citizen's
    -- month then and now. Netted before anything is written.
    local was, is = month_of(was_born), month_of(is_born)
    local change = {}
    local function bump(m, id, d)
        local k = m .. ':' .. tostring(id_key(id))
        local e = change[k]
        if e == nil then
            change[k] = { m, id, d }
        else
            e[3] = e[3] + d
        end
    end
    for _, r in ipairs(gone) do
        bump(was, r, -1)
    end
    for _, r in ipairs(joined) do
        bump(is, r, 1)
    end
    if was ~= is then
        for _, r in ipairs(kept) do
            bump(was, r, -1)
            bump(is, r, 1)
        end
    end
    for _, other in ipairs(others) do
        local joins = not contains(gone, other[F.citizen_id])
        bump(month_of(other[F.birth_date]), citizen_id, joins and 1 or -1)
    end
    for _, other in ipairs(others) do
        local r = other[F.citizen_id]
        if contains(gone, r) then
            citizens:update({ import_id, r }, { { '=', F.relatives, list_without(other[F.relatives], citizen_id) } })
        else
            citizens:update({ import_id, r }, { { '=', F.relatives, list_with(other[F.relatives], citizen_id) } })
        end
    end
    if new_list ~= old_list then
        ops[#ops + 1] = { '=', F.relatives, relatives }
    end
    local updated = citizen
    if #ops > 0 then
        updated = citizens:update({ import_id, citizen_id }, ops)
    end
    for _, e in pairs(change) do
        if e[3] ~= 0 then
            local key = { import_id, e[1], e[2] }
            local row = presents:get(key)
            local n = (row and row[4] or 0) + e[3]
            if n > 0 then
                presents:replace({ import_id, e[1], e[2], n })
            elseif row ~= nil then
                presents:delete(key)
            end
        end
    end
    if births_moved then
        for _, step in ipairs({ { was_town, date_key(was_born), -1 }, { is_town, date_key(is_born), 1 } }) do
            local key = { import_id, step[1], step[2] }
            local row = town_births:get(key)
            local n = (row and row[4] or 0) + step[3]
            if n > 0 then
                town_births:replace({ import_id, step[1], step[2], n })
            else
                town_births:delete(key)
            end
        end
    end
    local import = imports:update(import_id, { { '+', I.version, 1 } })
    return 'ok', updated, box.NULL, import[I.version], box.NULL
end

function P.gifts_patch_citizen(import_id, citizen_id, changes, relatives)
    return box.atomic(patch_citizen, import_id, citizen_id, changes, relatives)
end

-- Several patches in one transaction, so one WAL write and one fsync make
-- them all durable (the app sends the PATCHes that queued while the
-- previous call was out). patches: a list of {import_id, citizen_id,
-- changes, relatives}, applied in order. Returns the list of their answers,
-- each as gifts_patch_citizen's; a refused one writes nothing and leaves
-- the others be. One that fails (raises: a fault, not a refusal) is taken
-- back to its savepoint and answers 'error', reason; the others stand.
function P.gifts_patch_batch(patches)
    return box.atomic(function()
        local answers = {}
        for i, p in ipairs(patches) do
            local savepoint = box.savepoint()
            local answer = { pcall(patch_citizen, p[1], p[2], p[3], p[4]) }
            if answer[1] then
                answers[i] = { answer[2], answer[3], answer[4], answer[5], answer[6] }
            else
                box.rollback_to_savepoint(savepoint)
                log.error('gifts: patch of citizen %s of import %s failed: %s', tostring(p[2]), tostring(p[1]), tostring(answer[2]))
                answers[i] = { 'error', box.NULL, box.NULL, box.NULL, tostring(answer[2]) }
            end
        end
        return answers
    end)
end

return P
