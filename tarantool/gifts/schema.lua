-- gifts: the spaces, their field numbers, and the migrations that make them.

local log = require('log')

local M = {}

-- Field numbers of a citizen tuple (1-based, as Lua sees them).
M.F = {
    import_id = 1, citizen_id = 2, town = 3, street = 4, building = 5, apartment = 6,
    name = 7, birth_date = 8, gender = 9, relatives = 10,
}

-- Field numbers of an import tuple.
M.I = { import_id = 1, version = 2, created_at = 3, state = 4, citizens = 5, name = 6, digest = 7 }

-- The analytics summary (the app's domain::summary, which documents it):
-- presents rows {import_id, month, citizen_id, presents} and town years
-- {import_id, town, yyyy, dates}, one row per year in which a town has
-- births, `dates` being 8 bytes per date in date order: yyyymmdd and how
-- many citizens were born then, each a 4-byte little-endian number (the
-- app's summary::encode_dates, so the app joins a town's years as they
-- come). At most 366 dates (2,928 bytes), so a row stays small however
-- many dates a town has, and a read of a town's dates is a few rows, not
-- one per date. The app
-- computes an import's rows and sends them with it; a PATCH changes them
-- here, in its transaction. So an analytics read costs its answer, not a
-- pass over the import.

-- Month and yyyymmdd of a stored ISO date 'YYYY-MM-DD'.
function M.month_of(iso)
    return tonumber(iso:sub(6, 7))
end
function M.date_key(iso)
    return tonumber(iso:sub(1, 4)) * 10000 + tonumber(iso:sub(6, 7)) * 100 + tonumber(iso:sub(9, 10))
end

local function u32_at(s, at)
    local a, b, c, d = string.byte(s, at, at + 3)
    return a + b * 256 + c * 65536 + d * 16777216
end

-- The 4 bytes of n, least significant first.
local function u32(n)
    return string.char(n % 256, math.floor(n / 256) % 256, math.floor(n / 65536) % 256, math.floor(n / 16777216))
end

-- A town year's entry: yyyymmdd `key` with `n` citizens born then.
function M.entry(key, n)
    return u32(key) .. u32(n)
end

-- How many citizens a town year's `dates` (see the summary above) count as
-- born on yyyymmdd `key`, and the byte at which its entry starts in
-- `dates` (or the first later one's, #dates + 1 when none is).
function M.born_on(dates, key)
    for at = 1, #dates - 7, 8 do
        local k = u32_at(dates, at)
        if k >= key then
            return k == key and u32_at(dates, at + 4) or 0, at
        end
    end
    return 0, #dates + 1
end

-- The citizens a town year's `dates` count.
function M.year_births(dates)
    local n = 0
    for at = 5, #dates - 3, 8 do
        n = n + u32_at(dates, at)
    end
    return n
end

-- A migration that cannot run in a transaction (one that builds an index
-- of a space with tuples): it must be safe to run again.
function M.outside_transaction(migration)
    return { run = migration }
end

-- Schema migrations, applied in order; meta['schema_version'] records how many ran.
local migrations = {
    -- 1: imports {import_id, version} with an id sequence; citizens keyed by (import_id, citizen_id).
    function()
        box.schema.sequence.create('import_id', { min = 1, start = 1, if_not_exists = true })
        local imports = box.schema.space.create('imports', {
            if_not_exists = true,
            format = {
                { name = 'import_id', type = 'unsigned' },
                { name = 'version', type = 'unsigned' },
            },
        })
        imports:create_index('primary', {
            parts = { { field = 1, type = 'unsigned' } },
            if_not_exists = true,
        })
        local citizens = box.schema.space.create('citizens', {
            if_not_exists = true,
            format = {
                { name = 'import_id', type = 'unsigned' },
                { name = 'citizen_id', type = 'unsigned' },
                { name = 'town', type = 'string' },
                { name = 'street', type = 'string' },
                { name = 'building', type = 'string' },
                { name = 'apartment', type = 'unsigned' },
                { name = 'name', type = 'string' },
                { name = 'birth_date', type = 'string' },
                { name = 'gender', type = 'string' },
                { name = 'relatives', type = 'array' },
            },
        })
        citizens:create_index('primary', {
            parts = { { field = 1, type = 'unsigned' }, { field = 2, type = 'unsigned' } },
            if_not_exists = true,
        })
    end,
    -- 2: imports gain created_at (unix seconds) and state (nil: visible;
    -- 'loading' while a big import arrives in chunks); idempotency keys.
    function()
        box.space.imports:format({
            { name = 'import_id', type = 'unsigned' },
            { name = 'version', type = 'unsigned' },
            { name = 'created_at', type = 'number', is_nullable = true },
            { name = 'state', type = 'string', is_nullable = true },
        })
        local keys = box.schema.space.create('idempotency_keys', {
            if_not_exists = true,
            format = {
                { name = 'key', type = 'string' },
                { name = 'body_hash', type = 'string' },
                { name = 'import_id', type = 'unsigned' },
            },
        })
        keys:create_index('primary', { parts = { { field = 1, type = 'string' } }, if_not_exists = true })
    end,
    -- 3: imports gain their number of citizens (for the import list without
    -- counting); idempotency keys are found by import (for deleting one).
    function()
        box.space.imports:format({
            { name = 'import_id', type = 'unsigned' },
            { name = 'version', type = 'unsigned' },
            { name = 'created_at', type = 'number', is_nullable = true },
            { name = 'state', type = 'string', is_nullable = true },
            { name = 'citizens', type = 'unsigned', is_nullable = true },
        })
        for _, import in box.space.imports:pairs() do
            local n = box.space.citizens.index.primary:count({ import[1] })
            box.space.imports:update(import[1], { { '=', 5, n } })
        end
        box.space.idempotency_keys:create_index('import', {
            parts = { { field = 3, type = 'unsigned' } }, unique = false, if_not_exists = true,
        })
    end,
    -- 4: the analytics summary. The imports already stored are listed as
    -- 'summary_pending' in meta: the app computes their rows (the summary
    -- is computed in one place, the app's domain::summary) and sends them
    -- with gifts_backfill_rows; until then their analytics and PATCHes
    -- answer "unavailable" (see summary_pending in imports.lua).
    function()
        local presents = box.schema.space.create('presents', {
            if_not_exists = true,
            format = {
                { name = 'import_id', type = 'unsigned' },
                { name = 'month', type = 'unsigned' },
                { name = 'citizen_id', type = 'unsigned' },
                { name = 'presents', type = 'unsigned' },
            },
        })
        presents:create_index('primary', {
            parts = { { field = 1, type = 'unsigned' }, { field = 2, type = 'unsigned' }, { field = 3, type = 'unsigned' } },
            if_not_exists = true,
        })
        local towns = box.schema.space.create('town_dates', {
            if_not_exists = true,
            format = {
                { name = 'import_id', type = 'unsigned' },
                { name = 'town', type = 'string' },
                { name = 'dates', type = 'string' },
            },
        })
        towns:create_index('primary', {
            parts = { { field = 1, type = 'unsigned' }, { field = 2, type = 'string' } },
            if_not_exists = true,
        })
        local pending = {}
        for _, import in box.space.imports:pairs() do
            pending[#pending + 1] = import[1]
        end
        if #pending > 0 then
            box.space.meta:replace({ 'summary_pending', pending })
        end
    end,
    -- 5: town dates as rows {import_id, town, yyyymmdd, citizens}, one per
    -- distinct date, instead of one tuple per town, which hit
    -- memtx_max_tuple_size past ~131,000 distinct dates in one town.
    function()
        local births = box.schema.space.create('town_births', {
            if_not_exists = true,
            format = {
                { name = 'import_id', type = 'unsigned' },
                { name = 'town', type = 'string' },
                { name = 'date', type = 'unsigned' },
                { name = 'citizens', type = 'unsigned' },
            },
        })
        births:create_index('primary', {
            parts = { { field = 1, type = 'unsigned' }, { field = 2, type = 'string' }, { field = 3, type = 'unsigned' } },
            if_not_exists = true,
        })
        for _, t in box.space.town_dates:pairs() do
            local blob = t[3]
            for at = 1, #blob - 7, 8 do
                births:insert({ t[1], t[2], u32_at(blob, at), u32_at(blob, at + 4) })
            end
        end
        box.space.town_dates:drop()
    end,
    -- 6: PATCHes applied in steps (patch.lua's long PATCH): one row per
    -- import with one under way, {import_id, citizen_id, changes,
    -- relatives, steps done, this citizen's presents change per month so
    -- far}, written with the PATCH's first step and deleted with its last,
    -- so a crash in between is finished at the next start.
    function()
        local long = box.schema.space.create('long_patches', {
            if_not_exists = true,
            format = {
                { name = 'import_id', type = 'unsigned' },
                { name = 'citizen_id', type = 'unsigned' },
                { name = 'changes', type = 'any', is_nullable = true },
                { name = 'relatives', type = 'any', is_nullable = true },
                { name = 'done', type = 'unsigned' },
                { name = 'own', type = 'array' },
            },
        })
        long:create_index('primary', { parts = { { field = 1, type = 'unsigned' } }, if_not_exists = true })
    end,
    -- 7: town dates as a row per town and year, {import_id, town, yyyy,
    -- dates}, instead of a row per date: a cold read of an
    -- import's dates read ~10,000 tuples for 10,000 citizens (see the
    -- summary above).
    function()
        local years = box.schema.space.create('town_years', {
            if_not_exists = true,
            format = {
                { name = 'import_id', type = 'unsigned' },
                { name = 'town', type = 'string' },
                { name = 'year', type = 'unsigned' },
                { name = 'dates', type = 'string' },
            },
        })
        years:create_index('primary', {
            parts = { { field = 1, type = 'unsigned' }, { field = 2, type = 'string' }, { field = 3, type = 'unsigned' } },
            if_not_exists = true,
        })
        -- Rows come in key order: a town year's dates are one run, in order.
        local key, entries = nil, nil
        local function flush()
            if key ~= nil then
                years:insert({ key[1], key[2], key[3], table.concat(entries) })
            end
        end
        for _, b in box.space.town_births:pairs() do
            local year = math.floor(b[3] / 10000)
            if key == nil or key[1] ~= b[1] or key[2] ~= b[2] or key[3] ~= year then
                flush()
                key, entries = { b[1], b[2], year }, {}
            end
            entries[#entries + 1] = M.entry(b[3], b[4])
        end
        flush()
        box.space.town_births:drop()
    end,
    -- 8: imports gain the name they were uploaded with and the SHA-256 of
    -- their body, in hex (both nil for the imports stored before); the
    -- digest is indexed with the import's id, for GET /imports?digest=
    -- newest first from any import. Not in a transaction: Tarantool
    -- builds an index of a space that has tuples only outside one; each
    -- step can run again after a crash.
    M.outside_transaction(function()
        box.space.imports:format({
            { name = 'import_id', type = 'unsigned' },
            { name = 'version', type = 'unsigned' },
            { name = 'created_at', type = 'number', is_nullable = true },
            { name = 'state', type = 'string', is_nullable = true },
            { name = 'citizens', type = 'unsigned', is_nullable = true },
            { name = 'name', type = 'string', is_nullable = true },
            { name = 'digest', type = 'string', is_nullable = true },
        })
        box.space.imports:create_index('digest', {
            parts = { { field = 7, type = 'string', is_nullable = true }, { field = 1, type = 'unsigned' } },
            unique = false,
            if_not_exists = true,
        })
    end),
    -- 9: each town's picks, {import_id, town, picks}: the app's
    -- summary::picked, the few dates its percentile rule reads (at most 48
    -- bytes), so that a cold percentiles read takes a short row a town
    -- instead of its years. '' while not known: the app computes them (the
    -- rule is in Rust only) on the first read that finds them so and keeps
    -- them with gifts_put_picks; a write that moves a birth in or out of a
    -- town makes them unknown again. Every town with dates has a row, so a
    -- town is never missed.
    function()
        local picks = box.schema.space.create('town_picks', {
            if_not_exists = true,
            format = {
                { name = 'import_id', type = 'unsigned' },
                { name = 'town', type = 'string' },
                { name = 'picks', type = 'string' },
            },
        })
        picks:create_index('primary', {
            parts = { { field = 1, type = 'unsigned' }, { field = 2, type = 'string' } },
            if_not_exists = true,
        })
        local import_id, town = nil, nil
        for _, y in box.space.town_years:pairs() do
            if y[1] ~= import_id or y[2] ~= town then
                import_id, town = y[1], y[2]
                picks:replace({ import_id, town, '' })
            end
        end
    end,
}

-- Applies the migrations this database has not run yet, each in its own
-- transaction with the version it reaches.
function M.migrate()
    box.once('gifts_meta', function()
        box.schema.space.create('meta', {
            if_not_exists = true,
            format = { { name = 'key', type = 'string' }, { name = 'value', type = 'any' } },
        })
        box.space.meta:create_index('primary', { parts = { { field = 1, type = 'string' } }, if_not_exists = true })
    end)
    local row = box.space.meta:get('schema_version')
    local version = row and row[2] or 0
    if version > #migrations then
        error(string.format('schema version %d is newer than this app.lua knows (%d)', version, #migrations))
    end
    for i = version + 1, #migrations do
        local migration = migrations[i]
        if type(migration) == 'table' then
            migration.run()
            box.space.meta:replace({ 'schema_version', i })
        else
            box.atomic(function()
                migration()
                box.space.meta:replace({ 'schema_version', i })
            end)
        end
        log.info('gifts: applied schema migration %d', i)
    end
end

return M
