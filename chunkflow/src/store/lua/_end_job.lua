-- Prepended (after the key layout) to the scripts that end a job: commit_partition (the
-- last partition) and end_job (fail, cancel). Needs the roles of `Store::job_keys`; binding
-- them here, before the script's first write, refuses a caller that did not pass them.
local job = {
  meta = K.meta, done = K.done, counters = K.counters, reduced = K.reduced,
  stats = K.stats, errors = K.errors, attempts = K.attempts, map = K.map, result = K.result,
}

-- Refuses (before any write) partition key groups that disagree with the job's record.
local function check_partitions(partitions)
  if job.map.n ~= partitions or job.result.n ~= partitions then
    error('the caller passed ' .. job.map.n .. ' map and ' .. job.result.n ..
      ' result keys but the job has ' .. tostring(partitions) .. ' partitions')
  end
end

-- Deletes the intermediate data (done set, attempts, every partition's map hash) and puts a time to
-- live on everything else (record, counters, reduced set, stats, errors, results).
local function end_job(ttl)
  redis.call('UNLINK', job.done, job.attempts)
  for p = 0, job.map.n - 1 do redis.call('UNLINK', job.map[p]) end
  for _, key in ipairs({job.meta, job.counters, job.reduced, job.stats, job.errors}) do
    redis.call('EXPIRE', key, ttl)
  end
  for p = 0, job.result.n - 1 do redis.call('EXPIRE', job.result[p], ttl) end
end
