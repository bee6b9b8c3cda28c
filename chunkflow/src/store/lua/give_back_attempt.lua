#!lua
-- Gives back an attempt at a chunk that an outage of Redis cut short (invariant 10): takes
-- one from the chunk's started attempts, never below zero, and only while the job's record
-- exists (invariant 11). Returns the attempts left, or -1 if the job is gone.
-- KEYS: meta, attempts. ARGV[2]: chunk
local meta, attempts = K.meta, K.attempts
local chunk = ARGV[2]
if redis.call('EXISTS', meta) == 0 then return -1 end
local started = tonumber(redis.call('HGET', attempts, chunk) or '0')
if started <= 0 then return 0 end
return redis.call('HINCRBY', attempts, chunk, -1)
