#!lua
-- A partition's lease and its partials, in one step in the partition's slot (invariants 6,
-- 9, 11): read atomically with the lease, the partials are exactly what the partition
-- holds. Every grant is recorded (`lease_granted`), so the janitor can tell a lease that was
-- granted and expired (its holder froze or died mid-reduce) from a task merely waiting in
-- the queue. A missing record means Redis lost the partition.
-- KEYS: part, lease, map. ARGV[2..]: lease ttl_ms
-- Replies: {'missing'} | {'closed'} | {'reduced', records} | {'busy', remaining_ms} |
--   {'acquired', token, {chunk, partial, ...}}
local part, lease, map = K.part, K.lease, K.map
local ttl_ms = ARGV[2]
local record = redis.call('HMGET', part, 'state', 'records')
local state = record[1]
if not state then return {'missing'} end
if state == 'reduced' then
  -- A write, so a WAIT after it covers the result an earlier attempt stored before its
  -- job step was cut off (the caller runs that job step next).
  redis.call('HINCRBY', part, 'revisits', 1)
  return {'reduced', record[2] or '0'}
end
if state ~= 'open' then return {state} end
local remaining = redis.call('PTTL', lease)
if remaining > 0 then return {'busy', tostring(remaining)} end
local token = redis.call('HINCRBY', part, 'fence', 1)
redis.call('SET', lease, token, 'PX', ttl_ms)
redis.call('HSET', part, 'lease_granted', token)
return {'acquired', tostring(token), redis.call('HGETALL', map)}
