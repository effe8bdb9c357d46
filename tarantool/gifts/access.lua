-- gifts: who may call what. The app's user may call the stored procedures
-- and read the rows of a few spaces, and nothing else; guests get nothing.

local M = {}

local function granted(grantee, privilege, object_type, object_name)
    for _, grant in ipairs(box.schema.user.info(grantee)) do
        if grant[2] == object_type and (grant[3] or '') == (object_name or '')
            and string.find(grant[1], privilege, 1, true) then
            return true
        end
    end
    return false
end

-- Makes `user` (with `password`) able to call the functions `names` and
-- read (never write) the spaces `spaces`, and nothing else; the functions
-- run with their definer's rights (setuid) to reach the spaces. Guests get nothing: not even a session (Tarantool grants them
-- one, and the 'public' role with box.schema.user.info and reads of system
-- views). Nothing here writes when it is already so: a restart on a full
-- disk must get through to serving reads.
function M.grant(user, password, names, spaces)
    box.schema.user.create(user, { password = password, if_not_exists = true })
    local auth = box.space._user.index.name:get(user)[5]
    if auth == nil or auth['chap-sha1'] ~= box.schema.user.password(password) then
        box.schema.user.passwd(user, password)
    end
    for _, name in ipairs(names) do
        box.schema.func.create(name, { setuid = true, if_not_exists = true })
        box.schema.user.grant(user, 'execute', 'function', name, { if_not_exists = true })
    end
    for _, name in ipairs(spaces) do
        box.schema.user.grant(user, 'read', 'space', name, { if_not_exists = true })
    end
    if granted('guest', 'execute', 'role', 'public') then
        box.schema.user.revoke('guest', 'public')
    end
    if granted('guest', 'session', 'universe', nil) or granted('guest', 'usage', 'universe', nil) then
        box.schema.user.revoke('guest', 'session,usage', 'universe', nil, { if_exists = true })
    end
end

return M
