-- gifts: Tarantool schema and stored procedures.
--
-- Run as `tarantool tarantool/app.lua` from any directory (Tarantool 2.6+).
-- Environment:
--   GIFTS_TARANTOOL_LISTEN     port or HOST:PORT to listen on (default 127.0.0.1:3301:
--                              loopback only; a bare port listens on every interface)
--   GIFTS_TARANTOOL_DIR        data directory (default: the current directory, with a warning)
--   GIFTS_TARANTOOL_USER       user the app logs in as (default gifts)
--   GIFTS_TARANTOOL_PASSWORD   its password (default gifts)
--   GIFTS_TARANTOOL_WAL_MODE   'fsync' (default: an acknowledged write is on disk),
--                              'write' (survives a crash of tarantool, not of the host)
--   GIFTS_TARANTOOL_MEMORY     memtx memory quota: bytes, or with a unit such as 512MiB or 2GiB
--                              (default 1GiB)
--   GIFTS_TARANTOOL_MAX_TUPLE  largest tuple (memtx_max_tuple_size; default 256MiB). A
--                              citizen is one tuple, relatives included, and never bigger
--                              than the request body that carried it: the app refuses to
--                              start when its body limit is above this.
--
-- The app is stateless over this database: field formats are validated in
-- Rust, and the analytics are computed in Rust. What lives here is what must
-- be atomic: storing an import, and patching a citizen together with the
-- mirrored relatives of the others. Expected outcomes (not found, unknown
-- relative) are returned as values; raised errors mean real faults.

local log = require('log')

local function env(name, default)
    local value = os.getenv(name)
    if value == nil or value == '' then
        return default
    end
    return value
end

-- '1073741824', '1GiB', '512MiB', '512 KiB', '2GB' -> bytes; anything else stops the start.
local function bytes(name, default)
    local text = env(name, default)
    local number, unit = tostring(text):match('^%s*(%d+)%s*(%a*)%s*$')
    local factors = {
        [''] = 1, b = 1, k = 1024, kib = 1024, m = 1024 ^ 2, mib = 1024 ^ 2, g = 1024 ^ 3, gib = 1024 ^ 3,
        kb = 1e3, mb = 1e6, gb = 1e9,
    }
    local factor = number and factors[unit:lower()]
    if factor == nil then
        error(string.format('%s=%q: expected a number of bytes, optionally with a unit (512MiB, 1GiB)', name, text))
    end
    return tonumber(number) * factor
end

local data_dir = env('GIFTS_TARANTOOL_DIR', '.')
if os.getenv('GIFTS_TARANTOOL_DIR') == nil or os.getenv('GIFTS_TARANTOOL_DIR') == '' then
    log.warn('gifts: GIFTS_TARANTOOL_DIR is not set: the snapshots and WAL go into the current directory, %s',
        require('fio').cwd())
end
os.execute("mkdir -p '" .. data_dir:gsub("'", "'\\''") .. "'")

-- No `listen` yet: clients are let in only at the end, once the schema, the
-- user and its grants exist, so no client ever sees a half-started database
-- (a call in that window would fail with "access denied").
box.cfg({
    work_dir = data_dir,
    wal_mode = env('GIFTS_TARANTOOL_WAL_MODE', 'fsync'),
    memtx_memory = bytes('GIFTS_TARANTOOL_MEMORY', '1GiB'),
    -- A citizen related to everyone in a big import is one big tuple.
    memtx_max_tuple_size = bytes('GIFTS_TARANTOOL_MAX_TUPLE', '256MiB'),
    -- Big imports are one request; let them through.
    net_msg_max = 4096,
    readahead = 1024 * 1024,
})

-- Field numbers of a citizen tuple (1-based, as Lua sees them).
local F = {
    import_id = 1, citizen_id = 2, town = 3, street = 4, building = 5, apartment = 6,
    name = 7, birth_date = 8, gender = 9, relatives = 10,
}

-- A citizen id as a table key. Ids above 2^53 arrive as 64-bit cdata, and
-- tables key cdata by identity, not value: those are keyed by their text.
local function id_key(id)
    if type(id) == 'cdata' then
        return tostring(id)
    end
    return id
end

-- The analytics summary (the app's domain::summary, which documents it):
-- presents rows {import_id, month, citizen_id, presents} and town births
-- {import_id, town, yyyymmdd, citizens}, one row per distinct birth date of
-- a town (rows, not one tuple per town: a town may have any number of
-- dates). The app computes an import's rows and sends them with it; a PATCH
-- changes them here, in its transaction. So an analytics read costs its
-- answer, not a pass over the import.

-- Month and yyyymmdd of a stored ISO date 'YYYY-MM-DD'.
local function month_of(iso)
    return tonumber(iso:sub(6, 7))
end
local function date_key(iso)
    return tonumber(iso:sub(1, 4)) * 10000 + tonumber(iso:sub(6, 7)) * 100 + tonumber(iso:sub(9, 10))
end

local function u32_at(s, at)
    local a, b, c, d = string.byte(s, at, at + 3)
    return a + b * 256 + c * 65536 + d * 16777216
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
    -- answer "unavailable" (see summary_pending).
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
}

box.once('gifts_meta', function()
    box.schema.space.create('meta', {
        if_not_exists = true,
        format = { { name = 'key', type = 'string' }, { name = 'value', type = 'any' } },
    })
    box.space.meta:create_index('primary', { parts = { { field = 1, type = 'string' } }, if_not_exists = true })
end)

local function migrate()
    local row = box.space.meta:get('schema_version')
    local version = row and row[2] or 0
    if version > #migrations then
        error(string.format('schema version %d is newer than this app.lua knows (%d)', version, #migrations))
    end
    for i = version + 1, #migrations do
        box.atomic(function()
            migrations[i]()
            box.space.meta:replace({ 'schema_version', i })
        end)
        log.info('gifts: applied schema migration %d', i)
    end
end
migrate()

local imports = box.space.imports
local citizens = box.space.citizens
local keys = box.space.idempotency_keys
local presents = box.space.presents
local town_births = box.space.town_births
local import_seq = box.sequence.import_id
local fiber = require('fiber')

-- Field numbers of an import tuple.
local I = { import_id = 1, version = 2, created_at = 3, state = 4, citizens = 5 }

-- Rows per transaction when a big import is stored or cleaned up in chunks.
local CHUNK = 10000

-- A long check yields (lets other requests run) after this much work, a
-- unit being one relative looked up: about 10 ms. Only where no
-- transaction is open (a yield inside one would abort it).
local PACE = 5000
local function pacer()
    local done = 0
    return function()
        done = done + 1
        if done >= PACE then
            done = 0
            fiber.yield()
        end
    end
end

-- An import clients may see: stored whole (not still arriving in chunks).
local function visible(import_id)
    local import = imports:get(import_id)
    if import == nil or import[I.state] ~= nil then
        return nil
    end
    return import
end

-- Imports stored before the summary whose rows the app has not sent yet
-- (migration 4 lists them): their analytics and PATCHes answer
-- "unavailable" (503, retried) until gifts_backfill_rows takes them off the
-- list. One meta:get when the list is gone, as it is but after an upgrade.
local function summary_pending(import_id)
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
local function refuse_pending(import_id)
    if summary_pending(import_id) then
        error(string.format('gifts_unavailable: the summary of import %d is being filled after an upgrade', import_id))
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

-- The summary rows the app computed for citizens (see the summary above),
-- stored for an import: presents {month, citizen_id, presents} and births
-- {town, yyyymmdd, citizens}. Cheap checks only: a presents row names one of
-- `by_id`'s citizens (when given); the rows' types are the spaces' formats.
local function summary_error(presents_rows, by_id)
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

local function store_summary(import_id, presents_rows, births)
    for _, p in ipairs(presents_rows) do
        presents:insert({ import_id, p[1], p[2], p[3] })
    end
    for _, b in ipairs(births) do
        town_births:insert({ import_id, b[1], b[2], b[3] })
    end
end

-- Stores a validated, symmetric import in one transaction, with the summary
-- rows the app computed for it. rows: citizen tuples whose first field
-- (import_id) is a placeholder 0:
-- {0, citizen_id, town, street, building, apartment, name, birth_date, gender, relatives};
-- filling it in place saves building a second table per citizen.
-- presents_rows, births: as store_summary takes them. key, hash: an
-- idempotency key and the body's hash, or nil. The relation check yields
-- on a big import (no transaction is open yet); the app sends an import
-- here only when its writes are small, and bigger ones in chunks.
-- Returns status, import id: 'ok' (stored now), 'same' (the key's import),
-- 'key_reused' (the key's import, another body), or 'invalid', reason.
function gifts_create_import(rows, presents_rows, births, key, hash)
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
        born = born + b[3]
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
        imports:insert({ import_id, 1, os.time(), box.NULL, #rows })
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
function gifts_import_begin(key, hash)
    return box.atomic(function()
        local state, existing = key_state(key, hash)
        if state ~= 'new' then
            return state, existing
        end
        local import_id = import_seq:next()
        imports:insert({ import_id, 0, os.time(), 'loading', 0 })
        return 'ok', import_id
    end)
end

-- Adds rows (as for gifts_create_import), the presents rows of those
-- citizens, and town births rows (of any citizens of the import), to a
-- loading import, in one transaction. Returns 'ok', or 'invalid', reason
-- (an import that is not loading, a presents row of another citizen). A
-- citizen or a town's date sent twice fails on the primary key and rolls
-- the chunk back.
function gifts_import_chunk(import_id, rows, presents_rows, births)
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
    for _, space in ipairs({ citizens, presents, town_births }) do
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
function gifts_import_commit(import_id, key, hash)
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
            local batch = town_births:select(from, { iterator = iterator, limit = CHUNK })
            local n = 0
            for _, b in ipairs(batch) do
                if b[1] ~= import_id then
                    break
                end
                born = born + b[4]
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
-- first: {import_id, citizens, created_at, version} each.
function gifts_list_imports(limit, before)
    local out = {}
    local from, iterator = before, 'LT'
    if before == nil or before == box.NULL then
        from, iterator = nil, 'REQ'
    end
    for _, import in imports:pairs(from, { iterator = iterator }) do
        if #out >= limit then
            break
        end
        if import[I.state] == nil then
            out[#out + 1] = { import[I.import_id], import[I.citizens] or 0, import[I.created_at] or 0, import[I.version] }
        end
    end
    return out
end

-- Deletes a visible import: it disappears for everyone in one small
-- transaction (with its idempotency keys), then its citizens go in chunks
-- (a crash in between leaves an invisible import that the next start
-- deletes). Returns 'ok' or 'not_found'.
function gifts_delete_import(import_id)
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
function gifts_totals()
    local count, citizens = 0, 0
    for _, import in imports:pairs() do
        if import[I.state] == nil then
            count = count + 1
            citizens = citizens + (import[I.citizens] or 0)
        end
    end
    return count, citizens, box.space.citizens:len()
end

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

function gifts_patch_citizen(import_id, citizen_id, changes, relatives)
    return box.atomic(patch_citizen, import_id, citizen_id, changes, relatives)
end

-- Several patches in one transaction, so one WAL write and one fsync make
-- them all durable (the app sends the PATCHes that queued while the
-- previous call was out). patches: a list of {import_id, citizen_id,
-- changes, relatives}, applied in order. Returns the list of their answers,
-- each as gifts_patch_citizen's; a refused one writes nothing and leaves
-- the others be. One that fails (raises: a fault, not a refusal) is taken
-- back to its savepoint and answers 'error', reason; the others stand.
function gifts_patch_batch(patches)
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

-- The import's version and all its citizens ordered by citizen_id, read
-- without yielding (one consistent state); nil, nil when there is no such import.
function gifts_citizens(import_id)
    local import = visible(import_id)
    if import == nil then
        return box.NULL, box.NULL
    end
    return import[I.version], citizens:select({ import_id })
end

-- The import's version and its presents rows (ordered by month, then
-- citizen_id), read without yielding; nil, nil when there is no such import.
function gifts_presents(import_id)
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
function gifts_town_dates(import_id)
    local import = visible(import_id)
    if import == nil then
        return box.NULL, box.NULL
    end
    refuse_pending(import_id)
    return import[I.version], town_births:select({ import_id })
end

-- The spaces a paged read may read: keyed by import first.
local PAGED = { citizens = citizens, presents = presents, town_births = town_births }
local msgpack = require('msgpack')
local digest = require('digest')

-- One page of an import's rows of `space_name` ('citizens', 'presents' or
-- 'town_births') in primary key order: at most `limit` rows after `cursor`
-- (nil: from the first). Returns the import's version, the rows, and the
-- cursor of the next page (nil after the last one); nil, nil, nil when
-- there is no such import. Every write of an import bumps its version, so
-- a reader that sees one version on every page has read one state; a big
-- import read a page per call never holds the database for long.
function gifts_page(space_name, import_id, cursor, limit)
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
function gifts_import_version(import_id)
    local import = visible(import_id)
    if import == nil then
        return box.NULL
    end
    return import[I.version]
end

-- Answers when the database and our schema are there.
-- Answers the schema version and the largest tuple memtx takes (the app
-- checks its body limit against it).
-- The third answer: how many imports wait for their summary (see
-- summary_pending); the app fills them while it is more than 0.
function gifts_health()
    local row = box.space.meta:get('schema_version')
    local pending = box.space.meta:get('summary_pending')
    return row and row[2] or 0, box.cfg.memtx_max_tuple_size, pending and #pending[2] or 0
end

-- The imports waiting for their summary rows (see summary_pending).
function gifts_backfill_list()
    local pending = box.space.meta:get('summary_pending')
    return pending and pending[2] or {}
end

-- Stores summary rows the app computed for an import stored before the
-- summary, as gifts_import_chunk takes them; `last`: the import's rows are
-- all there, and it leaves the list. Nothing is written for an import not
-- (or no longer) on the list: another instance of the app filled it, and
-- PATCHes may have changed its rows since. A deleted import just leaves it.
function gifts_backfill_rows(import_id, presents_rows, births, last)
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
            for _, b in ipairs(births) do
                town_births:replace({ import_id, b[1], b[2], b[3] })
            end
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
function gifts_probe_write()
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

-- Imports a crash (or a full disk) left half-stored are deleted, in
-- chunks. A delete that fails (the disk still full) must not stop the
-- start, which serves reads: it is tried again every 10 s, in a fiber.
local leftovers = {}
for _, import in imports:pairs() do
    if import[I.state] ~= nil then
        leftovers[#leftovers + 1] = import[I.import_id]
    end
end
local function delete_leftovers()
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
if not delete_leftovers() then
    fiber.create(function()
        repeat
            fiber.sleep(10)
        until delete_leftovers()
    end)
end

-- The app's user may call these functions and nothing else; they run with
-- their definer's rights (setuid) to reach the spaces.
local user = env('GIFTS_TARANTOOL_USER', 'gifts')
local password = env('GIFTS_TARANTOOL_PASSWORD', 'gifts')
-- Nothing here writes when it is already so: a restart on a full disk must
-- get through to serving reads.
box.schema.user.create(user, { password = password, if_not_exists = true })
local auth = box.space._user.index.name:get(user)[5]
if auth == nil or auth['chap-sha1'] ~= box.schema.user.password(password) then
    box.schema.user.passwd(user, password)
end
for _, name in ipairs({
    'gifts_create_import', 'gifts_import_begin', 'gifts_import_chunk', 'gifts_import_commit',
    'gifts_patch_citizen', 'gifts_patch_batch', 'gifts_citizens', 'gifts_import_version', 'gifts_health', 'gifts_probe_write',
    'gifts_list_imports', 'gifts_delete_import', 'gifts_totals', 'gifts_presents', 'gifts_town_dates',
    'gifts_page', 'gifts_backfill_list', 'gifts_backfill_rows',
}) do
    box.schema.func.create(name, { setuid = true, if_not_exists = true })
    box.schema.user.grant(user, 'execute', 'function', name, { if_not_exists = true })
end

-- Guests get nothing: not even a session (Tarantool grants them one, and the
-- 'public' role with box.schema.user.info and reads of system views).
local function granted(grantee, privilege, object_type, object_name)
    for _, grant in ipairs(box.schema.user.info(grantee)) do
        if grant[2] == object_type and (grant[3] or '') == (object_name or '')
            and string.find(grant[1], privilege, 1, true) then
            return true
        end
    end
    return false
end
if granted('guest', 'execute', 'role', 'public') then
    box.schema.user.revoke('guest', 'public')
end
if granted('guest', 'session', 'universe', nil) or granted('guest', 'usage', 'universe', nil) then
    box.schema.user.revoke('guest', 'session,usage', 'universe', nil, { if_exists = true })
end

local listen = env('GIFTS_TARANTOOL_LISTEN', '127.0.0.1:3301')
-- Loopback: 127.x.x.x, localhost or [::1] before the port. A bare port
-- listens on every interface.
local host = listen:match('^(.*):%d+$')
local loopback = host ~= nil
    and (host:match('^127%.') ~= nil or host == 'localhost' or host == '[::1]' or host == '::1')
if not loopback and password == 'gifts' then
    log.warn(string.rep('!', 72))
    log.warn('gifts: listening on %s, beyond this machine, with the DEFAULT PASSWORD "gifts":', listen)
    log.warn('gifts: anyone who reaches the port can read and change every import.')
    log.warn('gifts: set GIFTS_TARANTOOL_PASSWORD (and the app\'s --storage URL to match).')
    log.warn(string.rep('!', 72))
end
box.cfg({ listen = listen })
log.info('gifts: ready on %s, schema version %d, data in %s', listen, gifts_health(),
    require('fio').abspath(data_dir))
