#!lua
-- Creates a partition's record, open (invariant 11), only where none exists: the producer
-- creates every partition's record after the job's and before its first task, and nothing
-- creates one again once the job's record notes `partitions_ready`. 1 if created.
-- KEYS: part. ARGV[2..]: now_ms
local part = K.part
if redis.call('EXISTS', part) == 1 then return 0 end
redis.call('HSET', part, 'state', 'open', 'fence', 0, 'created_ms', ARGV[2])
return 1
