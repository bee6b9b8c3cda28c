#!lua
-- Everything a reducer needs to start on a partition, in one round trip: the job's state,
-- whether the partition is already reduced, the partition's lease (invariant 9), and, once
-- the lease is held, the partition's partials with the count of outputs committed to it
-- (invariants 6, 11). Read atomically with the lease, the partials are exactly what the
-- partition holds: fewer than committed means Redis lost data.
-- KEYS: meta, reduced, lease (of the partition), map (of the partition).
-- ARGV[2..]: partition, lease ttl_ms
-- Replies: {'missing'} | {'out_of_range', partitions} | {'not_reducing', state} |
--   {'reduced'} | {'busy', remaining_ms} |
--   {'acquired', spec, total or '', token, outputs committed, {chunk, partial, ...}}
local meta, reduced, lease, map = K.meta, K.reduced, K.lease, K.map
local partition, ttl_ms = ARGV[2], ARGV[3]
local record = redis.call('HMGET', meta, 'state', 'partitions', 'spec', 'total',
  'outputs:' .. partition)
local state = record[1]
if not state then return {'missing'} end
if tonumber(partition) >= (tonumber(record[2]) or 0) then
  return {'out_of_range', record[2] or '0'}
end
if state ~= 'reducing' then return {'not_reducing', state} end
if redis.call('SISMEMBER', reduced, partition) == 1 then return {'reduced'} end
local remaining = redis.call('PTTL', lease)
if remaining > 0 then return {'busy', tostring(remaining)} end
local token = redis.call('HINCRBY', meta, 'fence', 1)
redis.call('SET', lease, token, 'PX', ttl_ms)
-- The grant is recorded, so the janitor can tell a lease that was granted and expired (its
-- holder froze or died mid-reduce) from a task merely waiting in the queue.
redis.call('HSET', meta, 'lease_granted:' .. partition, token)
return {'acquired', record[3] or '', record[4] or '', tostring(token), record[5] or '0',
  redis.call('HGETALL', map)}
