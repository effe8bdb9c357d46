-- gifts: reads of an import, whole or a page at a time, and its version.

local schema = require('gifts.schema')
local stored = require('gifts.imports')
local locks = require('gifts.locks')

local I = schema.I
local visible, refuse_pending = stored.visible, stored.refuse_pending
local wait_idle = locks.wait_idle
local citizens = box.space.citizens
local presents = box.space.presents
local town_years = box.space.town_years
local town_picks = box.space.town_picks

-- The stored procedures: gifts_* by name.
local P = {}

-- Every read waits while a long PATCH holds the import (locks.lua), then
-- reads without yielding.

-- The import's version and all its citizens ordered by citizen_id, read
-- without yielding (one consistent state); nil, nil when there is no such import.
function P.gifts_citizens(import_id)
    wait_idle(import_id)
    local import = visible(import_id)
    if import == nil then
        return box.NULL, box.NULL
    end
    return import[I.version], citizens:select({ import_id })
end

-- The import's version and all its rows of a summary space, read without
-- yielding; nil, nil when there is no such import.
local function summary_rows(space, import_id)
    wait_idle(import_id)
    local import = visible(import_id)
    if import == nil then
        return box.NULL, box.NULL
    end
    refuse_pending(import_id)
    return import[I.version], space:select({ import_id })
end

-- The import's version and its presents rows (ordered by month, then
-- citizen_id).
function P.gifts_presents(import_id)
    return summary_rows(presents, import_id)
end

-- The import's version and its town years rows {import_id, town, yyyy,
-- {mmdd, citizens, ...}} (ordered by town, byte order, then year), read
-- as summary_rows reads them.
function P.gifts_town_dates(import_id)
    return summary_rows(town_years, import_id)
end

-- The import's version and its town picks rows {import_id, town, picks}
-- (ordered by town, byte order; picks '' where not known).
function P.gifts_town_picks(import_id)
    return summary_rows(town_picks, import_id)
end

-- Keeps the picks {{town, picks}, ...} the app computed from the import's
-- dates at `version`, for the towns whose picks are not known, if the
-- import is still at that version: no write came between, so they are
-- still those towns' picks. Returns whether it kept them. Only replaces
-- rows that say '' : a town is never added here.
function P.gifts_put_picks(import_id, version, picks)
    wait_idle(import_id)
    local import = visible(import_id)
    if import == nil or import[I.version] ~= version then
        return false
    end
    box.atomic(function()
        for _, p in ipairs(picks) do
            local row = town_picks:get({ import_id, p[1] })
            if row ~= nil and row[3] == '' then
                town_picks:replace({ import_id, p[1], p[2] })
            end
        end
    end)
    return true
end

-- The spaces the app reads rows of directly (IPROTO SELECT by primary key,
-- C code, no Lua: a tenth of the cost of returning the rows from here),
-- keyed by import first; access.lua grants the app's user `read` on them.
local READ = { citizens = citizens, presents = presents, town_years = town_years, town_picks = town_picks }

-- The import's version and the id of `space_name` (one of READ_SPACES) for
-- a direct read of its rows; nil, nil when there is no such import. Every
-- write of an import bumps its version in the same transaction, so a
-- reader that gets the same version before and after its SELECTs has read
-- one state; a big import read in many SELECTs never holds the database
-- for long.
function P.gifts_read_version(space_name, import_id)
    local space = READ[space_name]
    if space == nil then
        error('gifts_read_version: no such space ' .. tostring(space_name))
    end
    wait_idle(import_id)
    local import = visible(import_id)
    if import == nil then
        return box.NULL, box.NULL
    end
    if space ~= citizens then
        refuse_pending(import_id)
    end
    return import[I.version], space.id
end

-- The import's version (bumped by every patch), or nil; validates cached answers.
function P.gifts_import_version(import_id)
    wait_idle(import_id)
    local import = visible(import_id)
    if import == nil then
        return box.NULL
    end
    return import[I.version]
end

return {
    procedures = P,
    -- The spaces the app's user reads directly (see gifts_read_version).
    spaces = { 'citizens', 'presents', 'town_years', 'town_picks' },
}
