#!lua
-- A partition's job step (invariant 6), after its partition step stored the result: adds
-- the partition to the reduced set, first wins, and its result's record count to the
-- counters; the step that completes the set marks the job succeeded and ends its data
-- (end_job).
-- KEYS: the job's keys (Store::job_keys). ARGV[2..]: partition, records, ttl_secs, now_ms
-- Replies: {'reduced'} | {'succeeded'} | {'duplicate'} | {'not_reducing', state} | {'missing'}
local partition, records, ttl, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local state = redis.call('HGET', job.meta, 'state')
if not state then return {'missing'} end
if state ~= 'reducing' then return {'not_reducing', state} end
local partitions = tonumber(redis.call('HGET', job.meta, 'partitions'))
if tonumber(partition) >= partitions then
  error('partition ' .. partition .. ' is beyond the job\'s ' .. partitions .. ' partitions')
end
if redis.call('SADD', job.reduced, partition) == 0 then return {'duplicate'} end
redis.call('HINCRBY', job.counters, 'output_records', records)
redis.call('HSET', job.meta, 'updated_ms', now)
if redis.call('SCARD', job.reduced) == partitions then
  redis.call('HSET', job.meta, 'state', 'succeeded', 'finished_ms', now)
  end_job(tonumber(ttl))
  return {'succeeded'}
end
return {'reduced'}
