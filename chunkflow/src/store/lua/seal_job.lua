#!lua
-- Records a job's total number of chunks once all are published (invariant 2); if every
-- chunk was already committed, the map phase completes here (invariant 5).
-- KEYS: meta, done. ARGV[2..]: total, now_ms
local meta, done = K.meta, K.done
local total_text, now = ARGV[2], ARGV[3]
local state = redis.call('HGET', meta, 'state')
if not state then return {'missing'} end
local recorded = redis.call('HGET', meta, 'total')
if recorded and recorded ~= total_text then return {'mismatch', recorded} end
if state ~= 'running' then return {'not_running', state} end
local total = tonumber(total_text)
local committed = redis.call('SCARD', done)
local recorded_commits = tonumber(redis.call('HGET', meta, 'committed') or '0')
if committed ~= recorded_commits then
  return {'lost', 'the set of committed chunks has ' .. committed .. ' members but ' .. recorded_commits .. ' commits were recorded'}
end
if committed > 0 then
  for _, chunk in ipairs(redis.call('SMEMBERS', done)) do
    if tonumber(chunk) >= total then
      return {'corrupt', 'chunk ' .. chunk .. ' was committed but the producer published only ' .. total .. ' chunks (a foreign or corrupt task)'}
    end
  end
end
redis.call('HSET', meta, 'total', total_text, 'sealed_ms', now, 'updated_ms', now)
if committed == total then
  redis.call('HSET', meta, 'state', 'reducing', 'reducing_ms', now)
  return {'completed'}
end
return {'sealed', tostring(committed)}
