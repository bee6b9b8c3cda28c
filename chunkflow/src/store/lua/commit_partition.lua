#!lua
-- A partition's result, stored under a held lease: the partition step of a reduce commit
-- (invariants 6, 9). Unless the partition is reduced already or its lease was taken over,
-- stores the result and its record count, deletes the intermediate hash and the lease,
-- marks the partition reduced and puts the time to live on its keys. The job step
-- (mark_reduced) follows; a reduced partition answers with its stored record count, so a
-- redelivery can run a job step that a crash cut off.
-- KEYS: part, lease, map, result. ARGV[2..]: result, records, ttl_secs, now_ms, token
-- Replies: {'reduced'} | {'duplicate', records} | {'fenced'} | {'missing'} | {'closed'}
local part, lease, map, result = K.part, K.lease, K.map, K.result
local lines, records, ttl, now, token = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local state = redis.call('HGET', part, 'state')
if not state then return {'missing'} end
if state == 'reduced' then
  -- A write, so a WAIT after it covers the earlier holder's result too.
  redis.call('HINCRBY', part, 'duplicates', 1)
  return {'duplicate', redis.call('HGET', part, 'records') or '0'}
end
if state ~= 'open' then return {state} end
if redis.call('GET', lease) ~= token then return {'fenced'} end
redis.call('SET', result, lines, 'EX', ttl)
redis.call('UNLINK', map)
redis.call('DEL', lease)
redis.call('HSET', part, 'state', 'reduced', 'records', records, 'reduced_ms', now)
redis.call('EXPIRE', part, ttl)
return {'reduced'}
