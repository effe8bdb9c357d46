-- gifts: health, the summary filled in after an upgrade, and the probe of
-- a write after the disk was full.

local stored = require('gifts.imports')

local visible, summary_pending, summary_error = stored.visible, stored.summary_pending, stored.summary_error
local presents = box.space.presents
local town_years = box.space.town_years

-- The stored procedures: gifts_* by name.
local P = {}

-- Answers when the database and our schema are there.
-- Answers the schema version and the largest tuple memtx takes (the app
-- checks its body limit against it).
-- The third answer: how many imports wait for their summary (see
-- summary_pending); the app fills them while it is more than 0.
function P.gifts_health()
    local row = box.space.meta:get('schema_version')
    local pending = box.space.meta:get('summary_pending')
    return row and row[2] or 0, box.cfg.memtx_max_tuple_size, pending and #pending[2] or 0
end

-- The imports waiting for their summary rows (see summary_pending).
function P.gifts_backfill_list()
    local pending = box.space.meta:get('summary_pending')
    return pending and pending[2] or {}
end

-- Stores summary rows the app computed for an import stored before the
-- summary, as gifts_import_chunk takes them; `last`: the import's rows are
-- all there, and it leaves the list. Nothing is written for an import not
-- (or no longer) on the list: another instance of the app filled it, and
-- PATCHes may have changed its rows since. A deleted import just leaves it.
function P.gifts_backfill_rows(import_id, presents_rows, births, last)
    local reason = summary_error(presents_rows, nil)
    if reason ~= nil then
        return 'invalid', reason
    end
    box.atomic(function()
        if not summary_pending(import_id) then
            return
        end
        if visible(import_id) ~= nil then
            for _, p in ipairs(presents_rows) do
                presents:replace({ import_id, p[1], p[2], p[3] })
            end
            stored.store_births(import_id, births, town_years.replace)
        end
        if last or visible(import_id) == nil then
            local left = {}
            for _, id in ipairs(box.space.meta:get('summary_pending')[2]) do
                if id ~= import_id then
                    left[#left + 1] = id
                end
            end
            if #left == 0 then
                box.space.meta:delete('summary_pending')
            else
                box.space.meta:replace({ 'summary_pending', left })
            end
        end
    end)
    return 'ok', box.NULL
end

-- After a write failed for lack of disk space (or memory): a real write of
-- 1 MiB, taken back at once, tells whether there is room again for more than
-- a few bytes.
function P.gifts_probe_write()
    local block = string.rep('x', 64 * 1024)
    box.atomic(function()
        for i = 1, 16 do
            box.space.meta:replace({ 'probe ' .. i, block })
        end
    end)
    box.atomic(function()
        for i = 1, 16 do
            box.space.meta:delete('probe ' .. i)
        end
    end)
    return true
end

return P
