#!lua
-- Starts an attempt at a chunk and reads its job's state, in one round trip (invariant 10):
-- while the job is running and the chunk is not committed yet, adds one to the chunk's
-- started attempts. Returns {state, started}, started being '0' when no attempt was started
-- (the job is not running, or the chunk is committed); {'missing'} when the job's record is
-- gone (nothing is written then: never recreate part of a job, invariant 11).
-- KEYS: meta, done, attempts. ARGV[2]: chunk
local meta, done, attempts = K.meta, K.done, K.attempts
local chunk = ARGV[2]
local state = redis.call('HGET', meta, 'state')
if not state then return {'missing'} end
if state ~= 'running' or redis.call('SISMEMBER', done, chunk) == 1 then
  return {state, '0'}
end
return {state, tostring(redis.call('HINCRBY', attempts, chunk, 1))}
