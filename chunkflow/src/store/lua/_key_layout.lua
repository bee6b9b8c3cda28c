-- Prepended to every script (after its shebang) by `store::load_script`.
--
-- Binds KEYS to the roles the caller named in ARGV[1]. The Rust side builds KEYS and this
-- layout together (`ScriptKeys`), so a script never counts key positions itself and can
-- never silently disagree with the Rust key list: `meta done` gives K.meta and K.done. A
-- layout that names more or fewer keys than were passed, or a role the caller did not
-- pass, is an error. Every script binds the keys it uses before its first write, so such
-- an error never leaves half a change behind. A script's own arguments start at ARGV[2].
local K = {}
do
  local at = 1
  for role in string.gmatch(ARGV[1], '%S+') do
    K[role] = KEYS[at]
    at = at + 1
  end
  if at - 1 ~= #KEYS then
    error('key layout `' .. ARGV[1] .. '` names ' .. (at - 1) .. ' keys but ' .. #KEYS .. ' were passed')
  end
  setmetatable(K, {__index = function(_, name)
    error('script needs key `' .. tostring(name) .. '` but the caller did not pass it')
  end})
end
