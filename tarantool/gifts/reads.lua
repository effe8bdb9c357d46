-- gifts: reads of an import, whole or a page at a time, and its version.

local msgpack = require('msgpack')
local digest = require('digest')
local schema = require('gifts.schema')
local stored = require('gifts.imports')

local I = schema.I
local visible, refuse_pending = stored.visible, stored.refuse_pending
local citizens = box.space.citizens
local presents = box.space.presents
local town_births = box.space.town_births

-- The stored procedures: gifts_* by name.
local P = {}

-- The import's version and all its citizens ordered by citizen_id, read
-- without yielding (one consistent state); nil, nil when there is no such import.
function P.gifts_citizens(import_id)
    local import = visible(import_id)
    if import == nil then
        return box.NULL, box.NULL
    end
    return import[I.version], citizens:select({ import_id })
end

-- The import's version and its presents rows (ordered by month, then
-- citizen_id), read without yielding; nil, nil when there is no such import.
function P.gifts_presents(import_id)
    local import = visible(import_id)
    if import == nil then
        return box.NULL, box.NULL
    end
    refuse_pending(import_id)
    return import[I.version], presents:select({ import_id })
end

-- The import's version and its town births rows {import_id, town,
-- yyyymmdd, citizens} (ordered by town, byte order, then date), read
-- without yielding; nil, nil when there is no such import.
function P.gifts_town_dates(import_id)
    local import = visible(import_id)
    if import == nil then
        return box.NULL, box.NULL
    end
    refuse_pending(import_id)
    return import[I.version], town_births:select({ import_id })
end

-- The spaces a paged read may read: keyed by import first.
local PAGED = { citizens = citizens, presents = presents, town_births = town_births }

-- One page of an import's rows of `space_name` ('citizens', 'presents' or
-- 'town_births') in primary key order: at most `limit` rows after `cursor`
-- (nil: from the first). Returns the import's version, the rows, and the
-- cursor of the next page (nil after the last one); nil, nil, nil when
-- there is no such import. Every write of an import bumps its version, so
-- a reader that sees one version on every page has read one state; a big
-- import read a page per call never holds the database for long.
function P.gifts_page(space_name, import_id, cursor, limit)
    local space = PAGED[space_name]
    if space == nil then
        error('gifts_page: no such space ' .. tostring(space_name))
    end
    local import = visible(import_id)
    if import == nil then
        return box.NULL, box.NULL, box.NULL
    end
    if space ~= citizens then
        refuse_pending(import_id)
    end
    limit = math.max(1, math.min(limit, 100000))
    local from, iterator = { import_id }, 'GE'
    if cursor ~= nil and cursor ~= box.NULL then
        from, iterator = msgpack.decode(digest.base64_decode(cursor)), 'GT'
        if from[1] ~= import_id then
            error('gifts_page: a cursor of another import')
        end
    end
    local rows = space:select(from, { iterator = iterator, limit = limit })
    local n = #rows
    while n > 0 and rows[n][1] ~= import_id do
        rows[n] = nil
        n = n - 1
    end
    local next = box.NULL
    if n == limit then
        local key = {}
        for i, part in ipairs(space.index.primary.parts) do
            key[i] = rows[n][part.fieldno]
        end
        next = digest.base64_encode(msgpack.encode(key))
    end
    return import[I.version], rows, next
end

-- The import's version (bumped by every patch), or nil; validates cached answers.
function P.gifts_import_version(import_id)
    local import = visible(import_id)
    if import == nil then
        return box.NULL
    end
    return import[I.version]
end

return P
