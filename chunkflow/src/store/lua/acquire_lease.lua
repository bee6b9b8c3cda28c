#!lua
-- Grants a partition's lease if nobody holds it (invariant 9). A new token is larger than
-- every earlier one of the job.
-- KEYS: meta, lease. ARGV[2..]: ttl_ms
local meta, lease = K.meta, K.lease
local ttl_ms = ARGV[2]
if redis.call('EXISTS', meta) == 0 then return {'missing'} end
local remaining = redis.call('PTTL', lease)
if remaining > 0 then return {'busy', tostring(remaining)} end
local token = redis.call('HINCRBY', meta, 'fence', 1)
redis.call('SET', lease, token, 'PX', ttl_ms)
return {'acquired', tostring(token)}
