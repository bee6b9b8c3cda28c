#!lua
-- Closes a partition of a job that ended failed or cancelled (invariant 11): an open
-- partition becomes closed, so no partial is written to it any more, its intermediate data
-- and lease are deleted, and the time to live goes on its keys (a reduced partition keeps
-- its result until then). Never creates a record. Returns the state it found, or 'missing'.
-- KEYS: part, map, lease, result. ARGV[2..]: ttl_secs
local part, map, lease, result = K.part, K.map, K.lease, K.result
local ttl = ARGV[2]
local state = redis.call('HGET', part, 'state')
if not state then return 'missing' end
if state == 'open' then redis.call('HSET', part, 'state', 'closed') end
redis.call('UNLINK', map, lease)
redis.call('EXPIRE', part, ttl)
redis.call('EXPIRE', result, ttl)
return state
