-- gifts: relatives lists (ascending unique ids) and the invariants of the
-- relation, as the app's domain::relatives states them.

local fiber = require('fiber')

local M = {}

-- A citizen id as a table key. Ids above 2^53 arrive as 64-bit cdata, and
-- tables key cdata by identity, not value: those are keyed by their text.
local function id_key(id)
    if type(id) == 'cdata' then
        return tostring(id)
    end
    return id
end

-- A long check yields (lets other requests run) after this much work, a
-- unit being one relative looked up: about 10 ms. Only where no
-- transaction is open (a yield inside one would abort it).
local PACE = 5000
function M.pacer()
    local done = 0
    return function()
        done = done + 1
        if done >= PACE then
            done = 0
            fiber.yield()
        end
    end
end

-- Sorted-array helpers for relatives lists (ascending unique ids).
local function list_without(list, id)
    local out = {}
    for _, v in ipairs(list) do
        if v ~= id then
            out[#out + 1] = v
        end
    end
    return out
end

local function list_with(list, id)
    local out, placed = {}, false
    for _, v in ipairs(list) do
        if v == id then
            return list
        end
        if not placed and v > id then
            out[#out + 1] = id
            placed = true
        end
        out[#out + 1] = v
    end
    if not placed then
        out[#out + 1] = id
    end
    return out
end

local function strictly_ascending(list)
    for i = 2, #list do
        if not (list[i - 1] < list[i]) then
            return false
        end
    end
    return true
end

-- Whether `list` holds `id`: a binary search, since relatives lists are
-- ascending (checked). On a list that is not, a miss can be wrong, which
-- still refuses the import, by another reason; a hit is always right.
local function contains(list, id)
    local lo, hi = 1, #list
    while lo <= hi do
        local mid = math.floor((lo + hi) / 2)
        local v = list[mid]
        if v == id then
            return true
        elseif v < id then
            lo = mid + 1
        else
            hi = mid - 1
        end
    end
    return false
end

-- The invariants of the relation, checked here as well as in the app, so a
-- direct call with the app's credentials cannot break them: every relatives
-- list ascending and unique, every relative a citizen of the import (or the
-- citizen itself), every link listed on both sides. relatives_of(id) gives a
-- citizen's list, or nil if there is no such citizen; pace() is called per
-- relative looked up. Returns nil or a reason.
local function relation_error(ids, relatives_of, pace)
    -- Each list read once: a citizen related to 20,000 others is asked
    -- for by each of them (decoding its tuple every time was quadratic).
    local read = relatives_of
    local cache = {}
    relatives_of = function(id)
        local key = id_key(id)
        local list = cache[key]
        if list == nil then
            list = read(id) or false
            cache[key] = list
        end
        return list or nil
    end
    for _, id in ipairs(ids) do
        local list = relatives_of(id)
        if not strictly_ascending(list) then
            return string.format('citizen %s: relatives not ascending and unique', tostring(id))
        end
        for _, r in ipairs(list) do
            if r ~= id then
                local other = relatives_of(r)
                if other == nil then
                    return string.format('citizen %s: relative %s is not a citizen of the import', tostring(id), tostring(r))
                end
                if not contains(other, id) then
                    return string.format('citizen %s lists %s, who does not list it', tostring(id), tostring(r))
                end
                pace()
            end
        end
    end
    return nil
end

M.id_key = id_key
M.list_without = list_without
M.list_with = list_with
M.strictly_ascending = strictly_ascending
M.contains = contains
M.relation_error = relation_error

return M
