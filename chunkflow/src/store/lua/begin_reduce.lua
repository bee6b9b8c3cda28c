#!lua
-- A reduce task's job facts, in the job's slot (invariant 6): the job's state, whether the
-- partition is already reduced, and, while the job is reducing, its spec, sealed total and
-- the count of outputs committed to the partition. The lease and the partials are read
-- next, in the partition's slot (lease_partition).
-- KEYS: meta, reduced. ARGV[2..]: partition
-- Replies: {'missing'} | {'out_of_range', partitions} | {'not_reducing', state} |
--   {'reduced'} | {'reducing', spec, total or '', outputs committed}
local meta, reduced = K.meta, K.reduced
local partition = ARGV[2]
local record = redis.call('HMGET', meta, 'state', 'partitions', 'spec', 'total',
  'outputs:' .. partition)
local state = record[1]
if not state then return {'missing'} end
if tonumber(partition) >= (tonumber(record[2]) or 0) then
  return {'out_of_range', record[2] or '0'}
end
if state ~= 'reducing' then return {'not_reducing', state} end
if redis.call('SISMEMBER', reduced, partition) == 1 then return {'reduced'} end
return {'reducing', record[3] or '', record[4] or '', record[5] or '0'}
