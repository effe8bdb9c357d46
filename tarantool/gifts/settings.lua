-- gifts: the settings app.lua reads from the environment.

local M = {}

function M.env(name, default)
    local value = os.getenv(name)
    if value == nil or value == '' then
        return default
    end
    return value
end

-- '1073741824', '1GiB', '512MiB', '512 KiB', '2GB' -> bytes; anything else stops the start.
function M.bytes(name, default)
    local text = M.env(name, default)
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

-- A whole number of at least 0 (`default` when unset); anything else stops the start.
function M.count(name, default)
    local text = M.env(name, tostring(default))
    local number = tonumber(text)
    if number == nil or number < 0 or number ~= math.floor(number) then
        error(string.format('%s=%q: expected a whole number', name, text))
    end
    return number
end

-- The app user's password: the file GIFTS_TARANTOOL_PASSWORD_FILE names (a
-- Docker or systemd secret: the whole file but for one trailing newline), or
-- GIFTS_TARANTOOL_PASSWORD, or 'gifts'. Both set, an unreadable or an empty
-- file stop the start.
function M.password()
    local path = M.env('GIFTS_TARANTOOL_PASSWORD_FILE', nil)
    if path == nil then
        return M.env('GIFTS_TARANTOOL_PASSWORD', 'gifts')
    end
    if M.env('GIFTS_TARANTOOL_PASSWORD', nil) ~= nil then
        error('set GIFTS_TARANTOOL_PASSWORD or GIFTS_TARANTOOL_PASSWORD_FILE, not both')
    end
    local file, why = io.open(path, 'rb')
    if file == nil then
        error(string.format('GIFTS_TARANTOOL_PASSWORD_FILE: cannot read %s', why))
    end
    local text = file:read('*a') or ''
    file:close()
    text = text:gsub('\r?\n$', '')
    if text == '' then
        error(string.format('GIFTS_TARANTOOL_PASSWORD_FILE: %s is empty', path))
    end
    return text
end

return M
