-- gifts: imports held by a PATCH applied in steps (patch.lua's long PATCH).
--
-- A PATCH that mirrors many relatives' lists is applied in several small
-- transactions, so that it never holds the database for long (Tarantool
-- 2.6 cannot yield inside a transaction). In between, its import is
-- half-changed: whoever reads or writes that import waits here until the
-- PATCH is done. Other imports are not held up. The lock lives in memory;
-- a PATCH cut short by a crash is finished at the next start, before
-- clients are let in (patch.lua's resume_long_patches).

local fiber = require('fiber')
local relation = require('gifts.relation')

local id_key = relation.id_key

local M = {}

-- import id (as a table key) -> the condition its waiters wait on.
local held = {}

-- Whether a long PATCH holds the import now.
function M.held(import_id)
    return held[id_key(import_id)] ~= nil
end

-- Waits until no long PATCH holds the import. Only where no transaction
-- is open (a yield inside one would abort it); between the return and the
-- caller's next yield, nobody can take the import.
function M.wait_idle(import_id)
    local key = id_key(import_id)
    while held[key] ~= nil do
        held[key]:wait()
    end
end

-- Takes the import for a long PATCH (waiting for any other to finish).
function M.take(import_id)
    M.wait_idle(import_id)
    held[id_key(import_id)] = fiber.cond()
end

-- Lets the import go, waking everyone waiting for it.
function M.release(import_id)
    local key = id_key(import_id)
    local cond = held[key]
    held[key] = nil
    if cond ~= nil then
        cond:broadcast()
    end
end

return M
