#!lua
-- Grants a partition's lease if nobody holds it (invariant 9). A new token is larger than
-- every earlier one of the partition. Never creates a partition's record.
-- KEYS: part, lease. ARGV[2..]: ttl_ms
local part, lease = K.part, K.lease
local ttl_ms = ARGV[2]
if redis.call('EXISTS', part) == 0 then return {'missing'} end
local remaining = redis.call('PTTL', lease)
if remaining > 0 then return {'busy', tostring(remaining)} end
local token = redis.call('HINCRBY', part, 'fence', 1)
redis.call('SET', lease, token, 'PX', ttl_ms)
redis.call('HSET', part, 'lease_granted', token)
return {'acquired', tostring(token)}
