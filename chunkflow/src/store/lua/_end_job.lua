-- Prepended (after the key layout) to the scripts that end a job: mark_reduced (the last
-- partition) and end_job (fail, cancel). Needs the roles of `Store::job_keys` (the job's own
-- keys, all in its slot; its partitions are in theirs and are ended by their own steps);
-- binding them here, before the script's first write, refuses a caller that did not pass
-- them.
local job = {
  meta = K.meta, done = K.done, counters = K.counters, reduced = K.reduced,
  stats = K.stats, errors = K.errors, attempts = K.attempts,
}

-- Deletes the job's intermediate data (done set, attempts) and puts a time to live on the
-- rest of its own keys (record, counters, reduced set, stats, errors).
local function end_job(ttl)
  redis.call('UNLINK', job.done, job.attempts)
  for _, key in ipairs({job.meta, job.counters, job.reduced, job.stats, job.errors}) do
    redis.call('EXPIRE', key, ttl)
  end
end
