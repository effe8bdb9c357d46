-- gifts: Tarantool schema and stored procedures.
--
-- Run as `tarantool tarantool/app.lua` from any directory (Tarantool 2.6+).
-- Environment:
--   GIFTS_TARANTOOL_LISTEN     port or HOST:PORT to listen on (default 3301)
--   GIFTS_TARANTOOL_DIR        data directory (default: the current directory)
--   GIFTS_TARANTOOL_USER       user the app logs in as (default gifts)
--   GIFTS_TARANTOOL_PASSWORD   its password (default gifts)
--   GIFTS_TARANTOOL_WAL_MODE   'fsync' (default: an acknowledged write is on disk),
--                              'write' (survives a crash of tarantool, not of the host)
--   GIFTS_TARANTOOL_MEMORY     memtx memory quota: bytes, or with a unit such as 512MiB or 2GiB
--                              (default 1GiB)
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
os.execute("mkdir -p '" .. data_dir:gsub("'", "'\\''") .. "'")

-- No `listen` yet: clients are let in only at the end, once the schema, the
-- user and its grants exist, so no client ever sees a half-started database
-- (a call in that window would fail with "access denied").
box.cfg({
    work_dir = data_dir,
    wal_mode = env('GIFTS_TARANTOOL_WAL_MODE', 'fsync'),
    memtx_memory = bytes('GIFTS_TARANTOOL_MEMORY', '1GiB'),
    -- Big imports are one request; let them through.
    net_msg_max = 4096,
    readahead = 1024 * 1024,
})

-- Field numbers of a citizen tuple (1-based, as Lua sees them).
local F = {
    import_id = 1, citizen_id = 2, town = 3, street = 4, building = 5, apartment = 6,
    name = 7, birth_date = 8, gender = 9, relatives = 10,
}

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
local import_seq = box.sequence.import_id

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

local function as_set(list)
    local set = {}
    for _, v in ipairs(list) do
        set[v] = true
    end
    return set
end

-- Stores a validated, symmetric import; returns its new id.
-- rows: array of citizen tuples whose first field (import_id) is a placeholder:
-- {0, citizen_id, town, street, building, apartment, name, birth_date, gender, relatives}.
-- Filling the placeholder in place saves building a second table per citizen.
function gifts_create_import(rows)
    return box.atomic(function()
        local import_id = import_seq:next()
        imports:insert({ import_id, 1 })
        for _, r in ipairs(rows) do
            r[F.import_id] = import_id
            citizens:insert(r)
        end
        return import_id
    end)
end

-- Patches one citizen. changes: map of field name -> new value (not relatives);
-- relatives: new ascending list, or nil to keep it.
-- Returns status, citizen tuple or nil, unknown relative id or nil, and the
-- import's version after the write or nil; status is 'ok', 'import_not_found',
-- 'citizen_not_found' or 'unknown_relative'.
function gifts_patch_citizen(import_id, citizen_id, changes, relatives)
    return box.atomic(function()
        local citizen = citizens:get({ import_id, citizen_id })
        if citizen == nil then
            if imports:get(import_id) == nil then
                return 'import_not_found', box.NULL, box.NULL, box.NULL
            end
            return 'citizen_not_found', box.NULL, box.NULL, box.NULL
        end
        local ops = {}
        for name, value in pairs(changes or {}) do
            local field = F[name]
            if field == nil or field <= F.citizen_id or field == F.relatives then
                error('gifts_patch_citizen: field ' .. tostring(name) .. ' cannot be patched')
            end
            ops[#ops + 1] = { '=', field, value }
        end
        if relatives ~= nil and relatives ~= box.NULL then
            -- Check every new relative first, so nothing is written on rejection.
            for _, r in ipairs(relatives) do
                if r ~= citizen_id and citizens:get({ import_id, r }) == nil then
                    return 'unknown_relative', box.NULL, r, box.NULL
                end
            end
            local old, new = as_set(citizen[F.relatives]), as_set(relatives)
            for r in pairs(old) do
                if not new[r] and r ~= citizen_id then
                    local other = citizens:get({ import_id, r })
                    if other ~= nil then
                        citizens:update({ import_id, r }, { { '=', F.relatives, list_without(other[F.relatives], citizen_id) } })
                    end
                end
            end
            for r in pairs(new) do
                if not old[r] and r ~= citizen_id then
                    local other = citizens:get({ import_id, r })
                    citizens:update({ import_id, r }, { { '=', F.relatives, list_with(other[F.relatives], citizen_id) } })
                end
            end
            ops[#ops + 1] = { '=', F.relatives, relatives }
        end
        local updated = citizen
        if #ops > 0 then
            updated = citizens:update({ import_id, citizen_id }, ops)
        end
        local import = imports:update(import_id, { { '+', 2, 1 } })
        return 'ok', updated, box.NULL, import[2]
    end)
end

-- The import's version and all its citizens ordered by citizen_id, read
-- without yielding (one consistent state); nil, nil when there is no such import.
function gifts_citizens(import_id)
    local import = imports:get(import_id)
    if import == nil then
        return box.NULL, box.NULL
    end
    return import[2], citizens:select({ import_id })
end

-- The import's version (bumped by every patch), or nil; validates cached answers.
function gifts_import_version(import_id)
    local import = imports:get(import_id)
    if import == nil then
        return box.NULL
    end
    return import[2]
end

-- Answers when the database and our schema are there.
function gifts_health()
    local row = box.space.meta:get('schema_version')
    return row and row[2] or 0
end

-- The app's user may call these functions and nothing else; they run with
-- their definer's rights (setuid) to reach the spaces.
local user = env('GIFTS_TARANTOOL_USER', 'gifts')
local password = env('GIFTS_TARANTOOL_PASSWORD', 'gifts')
box.schema.user.create(user, { password = password, if_not_exists = true })
box.schema.user.passwd(user, password)
for _, name in ipairs({
    'gifts_create_import', 'gifts_patch_citizen', 'gifts_citizens', 'gifts_import_version', 'gifts_health',
}) do
    box.schema.func.create(name, { setuid = true, if_not_exists = true })
    box.schema.user.grant(user, 'execute', 'function', name, { if_not_exists = true })
end

local listen = env('GIFTS_TARANTOOL_LISTEN', '3301')
box.cfg({ listen = listen })
log.info('gifts: ready on %s, schema version %d', listen, gifts_health())
