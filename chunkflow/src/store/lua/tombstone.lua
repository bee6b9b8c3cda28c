#!lua
-- Records that a job whose state Redis lost has failed. Only if nothing is there: it never
-- mixes with (or revives) a job's real state. Returns 1 if written.
-- KEYS: meta. ARGV[2..]: spec json, partitions, reason, now_ms, ttl_secs
local meta = K.meta
local spec, partitions, reason, now, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('EXISTS', meta) == 1 then return 0 end
redis.call('HSET', meta, 'spec', spec, 'state', 'failed', 'partitions', partitions,
  'reason', reason, 'created_ms', now, 'finished_ms', now, 'updated_ms', now)
redis.call('EXPIRE', meta, ttl)
return 1
