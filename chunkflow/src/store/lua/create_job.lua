#!lua
-- Stores a new job's record (spec first: invariant 2); 0 if the id is taken.
-- KEYS: meta. ARGV[2..]: spec json, partitions, now_ms
local meta = K.meta
local spec, partitions, now = ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', meta) == 1 then return 0 end
redis.call('HSET', meta, 'spec', spec, 'state', 'running', 'partitions', partitions,
  'created_ms', now, 'updated_ms', now)
return 1
