#!lua
-- Stores a partition's result under a held lease (invariants 6, 9): unless the partition is
-- already reduced or the lease was taken over, stores the result, deletes the partition's
-- intermediate hash and marks it reduced; the last partition marks the job succeeded and
-- ends its data (end_job).
-- KEYS: the job's keys (Store::job_keys), lease.
-- ARGV[2..]: partition, result, records, ttl_secs, now_ms, token
local lease = K.lease
local partition_text, result, records = ARGV[2], ARGV[3], ARGV[4]
local ttl, now, token = ARGV[5], ARGV[6], ARGV[7]
local partition = tonumber(partition_text)
local result_key, map_key = job.result[partition], job.map[partition]
local state = redis.call('HGET', job.meta, 'state')
if not state then return {'missing'} end
if state ~= 'reducing' then return {'not_reducing', state} end
if redis.call('SISMEMBER', job.reduced, partition_text) == 1 then return {'duplicate'} end
if redis.call('GET', lease) ~= token then return {'fenced'} end
local partitions = tonumber(redis.call('HGET', job.meta, 'partitions'))
check_partitions(partitions)
redis.call('SET', result_key, result)
redis.call('UNLINK', map_key)
redis.call('SADD', job.reduced, partition_text)
redis.call('DEL', lease)
redis.call('HINCRBY', job.counters, 'output_records', records)
redis.call('HSET', job.meta, 'updated_ms', now)
if redis.call('SCARD', job.reduced) == partitions then
  redis.call('HSET', job.meta, 'state', 'succeeded', 'finished_ms', now)
  end_job(tonumber(ttl))
  return {'succeeded'}
end
return {'reduced'}
