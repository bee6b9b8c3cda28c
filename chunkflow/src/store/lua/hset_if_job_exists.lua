#!lua
-- Sets one field of a job's hash only while the job's record exists: never recreates part
-- of an ended or lost job (invariant 11). Returns 1 if written.
-- KEYS: meta, target. ARGV[2..]: field, value
local meta, target = K.meta, K.target
local field, value = ARGV[2], ARGV[3]
if redis.call('EXISTS', meta) == 0 then return 0 end
redis.call('HSET', target, field, value)
return 1
