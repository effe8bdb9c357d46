-- gifts: Tarantool schema and stored procedures.
--
-- Run as `tarantool tarantool/app.lua` from any directory (Tarantool 2.6+);
-- it loads its modules from tarantool/gifts/ beside it.
-- Environment:
--   GIFTS_TARANTOOL_LISTEN     port or HOST:PORT to listen on (default 127.0.0.1:3301:
--                              loopback only; a bare port listens on every interface)
--   GIFTS_TARANTOOL_DIR        data directory (default: the current directory, with a warning)
--   GIFTS_TARANTOOL_USER       user the app logs in as (default gifts)
--   GIFTS_TARANTOOL_PASSWORD   its password (default gifts)
--   GIFTS_TARANTOOL_PASSWORD_FILE  or a file holding it (a secret; then the variable
--                              above must be unset)
--   GIFTS_TARANTOOL_WAL_MODE   'fsync' (default: an acknowledged write is on disk),
--                              'write' (survives a crash of tarantool, not of the host)
--   GIFTS_TARANTOOL_MEMORY     memtx memory quota: bytes, or with a unit such as 512MiB or 2GiB
--                              (default 1GiB)
--   GIFTS_TARANTOOL_MAX_TUPLE  largest tuple (memtx_max_tuple_size; default 256MiB). A
--                              citizen is one tuple, relatives included, and never bigger
--                              than the request body that carried it: the app refuses to
--                              start when its body limit is above this.
--   GIFTS_TARANTOOL_PATCH_STEP the most relatives one transaction of a PATCH mirrors
--                              (default 1000); a PATCH that may mirror more is written in
--                              steps (gifts/patch.lua)
--   GIFTS_TARANTOOL_CRASH_AFTER_STEPS  tests only: exit in the middle of such a PATCH
--
-- The app is stateless over this database: field formats are validated in
-- Rust, and the analytics are computed in Rust. What lives here is what must
-- be atomic: storing an import, and patching a citizen together with the
-- mirrored relatives of the others. Expected outcomes (not found, unknown
-- relative) are returned as values; raised errors mean real faults.
--
-- The modules, in the order app.lua loads them:
--   gifts/settings.lua  the environment above
--   gifts/schema.lua    spaces, field numbers, migrations
--   gifts/relation.lua  relatives lists and the relation's invariants
--   gifts/locks.lua     imports held by a PATCH written in steps
--   gifts/imports.lua   storing, listing and deleting imports
--   gifts/patch.lua     a PATCH, a batch of them in one transaction, and one
--                       too big for one transaction, written in steps
--   gifts/reads.lua     an import's rows whole, and its version for the app's direct reads
--   gifts/health.lua    health, the summary after an upgrade, the write probe
--   gifts/access.lua    the app's user and its grants; nothing for guests

-- The modules are found beside this script, wherever it is run from (and
-- before box.cfg changes the working directory to the data directory).
local fio = require('fio')
local here = fio.dirname(fio.abspath((debug.getinfo(1, 'S').source:gsub('^@', ''))))
package.path = here .. '/?.lua;' .. package.path

local log = require('log')
local settings = require('gifts.settings')
local env, bytes = settings.env, settings.bytes
-- Read before anything starts, so a missing password file stops the start.
local password = settings.password()

local data_dir = env('GIFTS_TARANTOOL_DIR', '.')
if os.getenv('GIFTS_TARANTOOL_DIR') == nil or os.getenv('GIFTS_TARANTOOL_DIR') == '' then
    log.warn('gifts: GIFTS_TARANTOOL_DIR is not set: the snapshots and WAL go into the current directory, %s',
        fio.cwd())
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

require('gifts.schema').migrate()

-- The stored procedures, each a global function the app calls by name.
local imports = require('gifts.imports')
local procedures = {}
local reads = require('gifts.reads')
local patch = require('gifts.patch')
for _, module in ipairs({ imports.procedures, patch.procedures, reads.procedures, require('gifts.health') }) do
    for name, procedure in pairs(module) do
        assert(procedures[name] == nil, name .. ' is defined twice')
        procedures[name] = procedure
    end
end
local names = {}
for name, procedure in pairs(procedures) do
    rawset(_G, name, procedure)
    names[#names + 1] = name
end
table.sort(names)

imports.delete_leftovers()
patch.resume_long_patches()

require('gifts.access').grant(env('GIFTS_TARANTOOL_USER', 'gifts'), password, names, reads.spaces)

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
    log.warn('gifts: set GIFTS_TARANTOOL_PASSWORD or GIFTS_TARANTOOL_PASSWORD_FILE (and the app\'s password to match).')
    log.warn(string.rep('!', 72))
end
box.cfg({ listen = listen })
log.info('gifts: ready on %s, schema version %d, data in %s', listen, procedures.gifts_health(),
    fio.abspath(data_dir))
