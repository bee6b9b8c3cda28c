-- Prepended to every script (after its shebang) by `store::load_script`.
--
-- Binds KEYS to the roles the caller named in ARGV[1]. The Rust side builds KEYS and this
-- layout together (`ScriptKeys`), so a script never counts key positions itself and can
-- never silently disagree with the Rust key list: `meta done map*4` gives K.meta, K.done
-- and the group K.map[0] .. K.map[3] (K.map.n == 4). A layout that names more or fewer
-- keys than were passed, or a role or group member the caller did not pass, is an error.
-- Every script binds the keys it uses before its first write, so such an error never
-- leaves half a change behind. A script's own arguments start at ARGV[2].
local K = {}
do
  local function refuse(what)
    return function(_, name)
      error('script needs ' .. what .. ' `' .. tostring(name) .. '` but the caller did not pass it')
    end
  end
  local at = 1
  for item in string.gmatch(ARGV[1], '%S+') do
    local role, count = string.match(item, '^([%w_]+)%*(%d+)$')
    if role then
      local group = {n = tonumber(count)}
      for i = 0, group.n - 1 do group[i] = KEYS[at + i] end
      at = at + group.n
      K[role] = setmetatable(group, {__index = refuse('member of key group ' .. role .. ' at index')})
    else
      K[item] = KEYS[at]
      at = at + 1
    end
  end
  if at - 1 ~= #KEYS then
    error('key layout `' .. ARGV[1] .. '` names ' .. (at - 1) .. ' keys but ' .. #KEYS .. ' were passed')
  end
  setmetatable(K, {__index = refuse('key')})
end
