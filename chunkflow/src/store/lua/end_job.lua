#!lua
-- Ends a running or reducing job as failed or cancelled, with a reason; the first ending
-- wins (a job ends once). Its partitions are closed next, each in its own slot
-- (close_partition), and the record then notes `partitions_closed`. Returns 'ended',
-- 'missing', or the state it had already ended in.
-- KEYS: the job's keys (Store::job_keys).
-- ARGV[2..]: reason, ttl_secs, now_ms, new state ('failed' or 'cancelled')
local reason, ttl, now, new_state = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local state = redis.call('HGET', job.meta, 'state')
if not state then return 'missing' end
if state ~= 'running' and state ~= 'reducing' then return state end
redis.call('HSET', job.meta, 'state', new_state, 'reason', reason, 'finished_ms', now,
  'updated_ms', now)
end_job(tonumber(ttl))
return 'ended'
