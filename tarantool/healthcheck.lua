-- Exit 0 when the local gifts Tarantool answers gifts_health with a schema
-- version, 1 otherwise. Reads the same GIFTS_TARANTOOL_* environment as app.lua.
local fio = require('fio')
local here = fio.dirname(fio.abspath((debug.getinfo(1, 'S').source:gsub('^@', ''))))
package.path = here .. '/?.lua;' .. package.path
local netbox = require('net.box')

local listen = os.getenv('GIFTS_TARANTOOL_LISTEN') or '3301'
local port = tostring(listen):match('(%d+)$') or '3301'
local conn = netbox.connect('127.0.0.1:' .. port, {
    user = os.getenv('GIFTS_TARANTOOL_USER') or 'gifts',
    password = require('gifts.settings').password(),
    wait_connected = 3,
})
local ok, version = pcall(function()
    return conn:call('gifts_health', {}, { timeout = 3 })
end)
conn:close()
os.exit((ok and type(version) == 'number' and version > 0) and 0 or 1)
