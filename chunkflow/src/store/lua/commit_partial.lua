#!lua
-- A chunk's partition step (invariant 3): writes the chunk's partial into the partition's
-- intermediate hash while the partition is open; the first attempt's partial wins. Never
-- recreates a partition's record (invariant 11): a missing record means Redis lost the
-- partition, and the caller fails the job saying so. Every reply but 'missing' follows a
-- write, so `--redis-min-replicas` can wait for the partial to be replicated.
-- KEYS: part, map. ARGV[2..]: chunk, partial
-- Replies: 'written' | 'duplicate' | 'missing' | 'reduced' | 'closed'
local part, map = K.part, K.map
local chunk, partial = ARGV[2], ARGV[3]
local state = redis.call('HGET', part, 'state')
if not state then return 'missing' end
if state ~= 'open' then return state end
if redis.call('HSETNX', map, chunk, partial) == 1 then return 'written' end
-- A write on the duplicate path too: a WAIT after it then also covers the earlier
-- attempt's write, which the replication stream carries before this one.
redis.call('HINCRBY', part, 'duplicates', 1)
return 'duplicate'
