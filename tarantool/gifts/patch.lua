-- gifts: a PATCH of one citizen, several in one transaction, and one too
-- big for one transaction, written in steps.

local fiber = require('fiber')
local log = require('log')
local schema = require('gifts.schema')
local relation = require('gifts.relation')
local stored = require('gifts.imports')
local locks = require('gifts.locks')
local settings = require('gifts.settings')

local F, I, month_of, date_key = schema.F, schema.I, schema.month_of, schema.date_key
local born_on, entry = schema.born_on, schema.entry
local strictly_ascending, pacer = relation.strictly_ascending, relation.pacer
local list_with, list_without = relation.list_with, relation.list_without
local visible, summary_pending = stored.visible, stored.summary_pending
local held, take, release = locks.held, locks.take, locks.release
local imports = box.space.imports
local citizens = box.space.citizens
local presents = box.space.presents
local town_years = box.space.town_years
local town_picks = box.space.town_picks
local long_patches = box.space.long_patches

-- The most relatives one transaction mirrors (a list rewritten, presents
-- moved): 5-15 us each on a 2-core machine, so a step holds the database
-- some 5-15 ms (20 under load). A PATCH that may mirror more is written in
-- steps; the app sends one that lists more relatives than this straight to
-- gifts_patch_long.
local STEP = settings.count('GIFTS_TARANTOOL_PATCH_STEP', 1000)
-- Tests only: exit in the middle of a long PATCH, after this many of its
-- steps (0: never), as a crash would.
local CRASH_AFTER = settings.count('GIFTS_TARANTOOL_CRASH_AFTER_STEPS', 0)
if STEP < 1 then
    error('GIFTS_TARANTOOL_PATCH_STEP must be at least 1')
end

-- The stored procedures: gifts_* by name.
local P = {}

-- Roles of a relative in a PATCH: it leaves the citizen's list, joins it,
-- or stays (listed only when the citizen's birth month changes, which
-- moves the relative's presents from one month to another).
local GONE, JOINED, KEPT = 1, 2, 3

local NULL = box.NULL

-- Twelve zeros: this citizen's presents change per month (own, below).
local function twelve()
    return { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }
end

local function no_pace() end

-- How many citizens of `town` the import's town years count as born on
-- yyyymmdd `key` (0 for none).
local function births_at(import_id, town, key)
    local row = town_years:get({ import_id, town, math.floor(key / 10000) })
    if row == nil then
        return 0
    end
    return (born_on(row[4], key))
end

-- The citizens of `town` born on yyyymmdd `key` changed by d, in its town
-- year's row (deleted when it counts no one any more).
local function add_birth(import_id, town, key, d)
    local k = { import_id, town, math.floor(key / 10000) }
    local row = town_years:get(k)
    local dates = row and row[4] or ''
    local n, at = born_on(dates, key)
    if n + d > 0 then
        local rest = n == 0 and at or at + 8
        dates = dates:sub(1, at - 1) .. entry(key, n + d) .. dates:sub(rest)
        town_years:replace({ k[1], k[2], k[3], dates })
    elseif n > 0 then
        dates = dates:sub(1, at - 1) .. dates:sub(at + 8)
        if #dates == 0 then
            town_years:delete(k)
        else
            town_years:replace({ k[1], k[2], k[3], dates })
        end
    end
    -- The town's picks are not known any more (schema.lua, 9); a town with
    -- no dates left has none.
    if town_years:select({ import_id, town }, { limit = 1 })[1] == nil then
        town_picks:delete({ import_id, town })
    else
        town_picks:replace({ import_id, town, '' })
    end
end

-- Checks a PATCH and works out what it changes, writing nothing. changes:
-- map of field name -> new value (not relatives); relatives: new ascending
-- list, or nil to keep it. With a `limit`, a PATCH whose relatives work
-- (the two lists merged, the relatives mirrored) could pass it is refused
-- as 'long' before any of that work is done.
-- Returns the plan, or nil and a refusal: status ('import_not_found',
-- 'unavailable', 'citizen_not_found', 'unknown_relative',
-- 'missing_relative', 'long' or 'invalid': a call the app would never
-- make), the relative it names or nil, a reason or nil.
-- The plan's ids and roles list, in ascending id order, every relative the
-- PATCH touches: the app's domain::patch::plan decisions, which SQLite and
-- PostgreSQL apply (the storage contract suite holds this to it): a
-- dropped relative loses this citizen, an added one gains it, the
-- citizen's own id is never mirrored.
local function plan(import_id, citizen_id, changes, relatives, limit, pace)
    if changes == NULL then
        changes = nil
    end
    if relatives == NULL then
        relatives = nil
    end
    if visible(import_id) == nil then
        return nil, 'import_not_found'
    end
    if summary_pending(import_id) then
        return nil, 'unavailable', nil, 'the summary of the import is being filled after an upgrade'
    end
    local citizen = citizens:get({ import_id, citizen_id })
    if citizen == nil then
        return nil, 'citizen_not_found'
    end
    local ops = {}
    for name, value in pairs(changes or {}) do
        local field = F[name]
        if field == nil or field <= F.citizen_id or field == F.relatives then
            return nil, 'invalid', nil, 'field ' .. tostring(name) .. ' cannot be patched'
        end
        ops[#ops + 1] = { '=', field, value }
    end
    local was_town, was_born = citizen[F.town], citizen[F.birth_date]
    local is_town = changes and changes.town or was_town
    local is_born = changes and changes.birth_date or was_born
    local was, is = month_of(was_born), month_of(is_born)
    if limit ~= nil then
        -- At most this many relatives, each taking a byte of the tuple at
        -- least: counted without reading the list (reading one of 100,000
        -- takes some 25 ms).
        local most = citizen:bsize()
        for _, field in ipairs({ F.town, F.street, F.building, F.name, F.birth_date, F.gender }) do
            most = most - #citizen[field]
        end
        local work = (relatives and most + #relatives or 0) + (was ~= is and most or 0)
        if work > limit then
            return nil, 'long'
        end
    end
    -- The list is read only when it is needed: a citizen may have
    -- 100,000 relatives, and a PATCH of its name touches none of them.
    local old_list
    if relatives ~= nil or was ~= is then
        old_list = citizen[F.relatives]
    end
    if relatives ~= nil and not strictly_ascending(relatives) then
        return nil, 'invalid', nil, 'relatives not ascending and unique'
    end
    -- Which relatives leave, join or stay: one merge of the two ascending
    -- lists (no per-id sets: a citizen may have 100,000 relatives).
    local ids, roles = {}, {}
    local function touch(id, role)
        ids[#ids + 1] = id
        roles[#roles + 1] = role
        pace()
    end
    if relatives ~= nil then
        local i, j = 1, 1
        while i <= #old_list or j <= #relatives do
            local o, n = old_list[i], relatives[j]
            if n == nil or (o ~= nil and o < n) then
                touch(o, GONE)
                i = i + 1
            elseif o == nil or n < o then
                touch(n, JOINED)
                j = j + 1
            else
                if was ~= is then
                    touch(o, KEPT)
                end
                i, j = i + 1, j + 1
            end
        end
        ops[#ops + 1] = { '=', F.relatives, relatives }
    elseif was ~= is then
        for _, o in ipairs(old_list) do
            touch(o, KEPT)
        end
    end
    -- An unknown added relative (the lowest) wins over a dropped one that
    -- is missing, which means a broken relation; then a broken store, in
    -- the app's order (domain::patch).
    for _, wanted in ipairs({ { JOINED, 'unknown_relative' }, { GONE, 'missing_relative' } }) do
        for k = 1, #ids do
            local r = ids[k]
            if roles[k] == wanted[1] and r ~= citizen_id then
                if citizens:get({ import_id, r }) == nil then
                    return nil, wanted[2], r
                end
                pace()
            end
        end
    end
    local births_moved = was_town ~= is_town or was_born ~= is_born
    if births_moved and births_at(import_id, was_town, date_key(was_born)) == 0 then
        return nil, 'invalid', nil, 'the stored dates of town ' .. was_town .. ' are corrupt'
    end
    return {
        citizen = citizen, ops = ops, ids = ids, roles = roles, was = was, is = is,
        births_moved = births_moved, was_town = was_town, was_born = was_born, is_town = is_town, is_born = is_born,
    }
end

-- One presents row {import_id, month, id} changed by d (deleted at 0).
local function add_presents(import_id, month, id, d)
    local key = { import_id, month, id }
    local row = presents:get(key)
    local n = (row and row[4] or 0) + d
    if n > 0 then
        presents:replace({ import_id, month, id, n })
    elseif row ~= nil then
        presents:delete(key)
    end
end

-- Writes the plan's relatives from..to: each one's list gains or loses
-- this citizen, and its presents move with this citizen's birth month.
-- This citizen's own presents change by the others' months: added to
-- `own` (per month), written by finish.
local function apply(import_id, citizen_id, p, from, to, own)
    local was, is = p.was, p.is
    for k = from, to do
        local r, role = p.ids[k], p.roles[k]
        if r == citizen_id then
            -- It lists itself: its own presents only.
            if role ~= JOINED then
                own[was] = own[was] - 1
            end
            if role ~= GONE then
                own[is] = own[is] + 1
            end
        else
            if role ~= JOINED then
                add_presents(import_id, was, r, -1)
            end
            if role ~= GONE then
                add_presents(import_id, is, r, 1)
            end
            if role ~= KEPT then
                local other = citizens:get({ import_id, r })
                if other == nil then
                    error(string.format('relative %s of citizen %s is gone', tostring(r), tostring(citizen_id)))
                end
                local list = other[F.relatives]
                if role == GONE then
                    list = list_without(list, citizen_id)
                else
                    list = list_with(list, citizen_id)
                end
                citizens:update({ import_id, r }, { { '=', F.relatives, list } })
                local m = month_of(other[F.birth_date])
                own[m] = own[m] + (role == JOINED and 1 or -1)
            end
        end
    end
end

-- Writes the citizen itself, its presents, its town's births and the
-- import's version: the PATCH's answer.
local function finish(import_id, citizen_id, p, own)
    local updated = p.citizen
    if #p.ops > 0 then
        updated = citizens:update({ import_id, citizen_id }, p.ops)
    end
    for m = 1, 12 do
        if own[m] ~= 0 then
            add_presents(import_id, m, citizen_id, own[m])
        end
    end
    if p.births_moved then
        add_birth(import_id, p.was_town, date_key(p.was_born), -1)
        add_birth(import_id, p.is_town, date_key(p.is_born), 1)
    end
    local import = imports:update(import_id, { { '+', I.version, 1 } })
    return 'ok', updated, NULL, import[I.version], NULL
end

-- A planned PATCH written whole, inside the caller's transaction.
local function write_whole(import_id, citizen_id, p)
    local own = twelve()
    apply(import_id, citizen_id, p, 1, #p.ids, own)
    return finish(import_id, citizen_id, p, own)
end

-- Patches one citizen inside the caller's transaction: the answer of
-- gifts_patch_citizen (status, citizen tuple, relative, the import's
-- version after the write, reason; see plan for the refusals). Everything
-- is checked before anything is written, so a refused patch writes
-- nothing. 'busy': a long PATCH holds the import; 'long': this one is
-- one (both: the app sends it again by gifts_patch_long).
local function patch_citizen(import_id, citizen_id, changes, relatives)
    if held(import_id) then
        return 'busy', NULL, NULL, NULL, NULL
    end
    local p, status, relative, reason = plan(import_id, citizen_id, changes, relatives, STEP, no_pace)
    if p == nil then
        return status, NULL, relative or NULL, NULL, reason or NULL
    end
    return write_whole(import_id, citizen_id, p)
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
                answers[i] = { 'error', NULL, NULL, NULL, tostring(answer[2]) }
            end
        end
        return answers
    end)
end

-- A long PATCH's steps from `done` on, each its own transaction, and then
-- the citizen itself; the long_patches row records the steps done and
-- goes with the last. A step that fails (a full disk, say) is tried again
-- every second: the PATCH is under way and the import stays held until it
-- is done, since half of it is written. Returns finish's answer.
local function run_steps(import_id, citizen_id, p, done, own)
    local steps = 0
    while true do
        local last = done >= #p.ids
        local to = math.min(done + STEP, #p.ids)
        local next_own = table.copy(own)
        local answer = { pcall(box.atomic, function()
            if last then
                long_patches:delete(import_id)
                return finish(import_id, citizen_id, p, next_own)
            end
            apply(import_id, citizen_id, p, done + 1, to, next_own)
            long_patches:update(import_id, { { '=', 5, to }, { '=', 6, next_own } })
        end) }
        if not answer[1] then
            log.error('gifts: a step of the PATCH of citizen %s of import %s failed (%s): trying again in 1 s',
                tostring(citizen_id), tostring(import_id), tostring(answer[2]))
            fiber.sleep(1)
        elseif last then
            return unpack(answer, 2, 6)
        else
            done, own = to, next_own
            steps = steps + 1
            if steps == CRASH_AFTER then
                log.warn('gifts: GIFTS_TARANTOOL_CRASH_AFTER_STEPS=%d: exiting in the middle of a PATCH (tests only)', steps)
                os.exit(1)
            end
        end
    end
end

-- A PATCH too big for one short transaction (or of an import a long PATCH
-- holds): checked with yields, then, if it mirrors more than STEP
-- relatives, written in steps of STEP relatives, the import held meanwhile
-- (locks.lua: its readers and writers wait, others do not).
local function patch_long(import_id, citizen_id, changes, relatives)
    local p, status, relative, reason = plan(import_id, citizen_id, changes, relatives, nil, pacer())
    if p == nil then
        return status, NULL, relative or NULL, NULL, reason or NULL
    end
    if #p.ids <= STEP then
        return box.atomic(write_whole, import_id, citizen_id, p)
    end
    box.atomic(function()
        long_patches:insert({ import_id, citizen_id, changes or NULL, relatives or NULL, 0, twelve() })
    end)
    return run_steps(import_id, citizen_id, p, 0, twelve())
end

-- A PATCH that gifts_patch_citizen or gifts_patch_batch answered 'long' or
-- 'busy': its answer, as theirs. It waits for any long PATCH of the same
-- import first.
function P.gifts_patch_long(import_id, citizen_id, changes, relatives)
    take(import_id)
    local answer = { pcall(patch_long, import_id, citizen_id, changes, relatives) }
    release(import_id)
    if not answer[1] then
        error(answer[2], 0)
    end
    return unpack(answer, 2, 6)
end

-- Finishes the long PATCHes a crash cut short, each in a fiber of its own
-- that holds its import until done: called at start, before clients are
-- let in, so none of them sees an import half-patched.
local function resume_long_patches()
    local rows = long_patches:select({})
    for _, row in ipairs(rows) do
        local import_id, citizen_id = row[1], row[2]
        take(import_id)
        fiber.create(function()
            local ok, err = pcall(function()
                local p, status, _, reason = plan(import_id, citizen_id, row[3], row[4], nil, pacer())
                if p == nil then
                    log.error('gifts: the PATCH of citizen %s of import %s cut short by a crash cannot go on (%s %s): dropped',
                        tostring(citizen_id), tostring(import_id), status, tostring(reason))
                    box.atomic(function()
                        long_patches:delete(import_id)
                    end)
                    return
                end
                run_steps(import_id, citizen_id, p, row[5], row[6])
                log.info('gifts: finished the PATCH of citizen %s of import %s, cut short by a crash',
                    tostring(citizen_id), tostring(import_id))
            end)
            if not ok then
                log.error('gifts: finishing the PATCH of citizen %s of import %s failed: %s',
                    tostring(citizen_id), tostring(import_id), tostring(err))
            end
            release(import_id)
        end)
    end
end

return { procedures = P, resume_long_patches = resume_long_patches }
