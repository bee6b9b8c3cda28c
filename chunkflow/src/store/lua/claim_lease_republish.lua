#!lua
-- Claims the republishing of a partition's reduce task whose lease was granted and then
-- expired while the partition is open (invariant 9): its holder froze or died mid-reduce
-- and its delivery may stay unacked, so nobody else would take the partition over. An
-- expired grant is claimed once (`lease_republished` = token, at `lease_republished_ms`),
-- so the janitors of all reducers republish it once between them, and never for a task
-- merely waiting in the queue (no grant) or a lease still held; again only if no new grant
-- came `again_after_ms` later (the republished task was prefetched by a frozen reducer
-- too, and nobody took the partition).
-- KEYS: part, lease. ARGV[2..]: token (the grant the caller saw expired), now_ms,
-- again_after_ms
-- Reply: 1 if claimed, else 0.
local part, lease = K.part, K.lease
local token, now, again_after = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local record = redis.call('HMGET', part, 'state', 'lease_granted', 'lease_republished',
  'lease_republished_ms')
if record[1] ~= 'open' or record[2] ~= token then return 0 end
if redis.call('PTTL', lease) > 0 then return 0 end
if record[3] == token and now - (tonumber(record[4]) or 0) < again_after then return 0 end
redis.call('HSET', part, 'lease_republished', token, 'lease_republished_ms', now)
return 1
