#!lua
-- Claims the republishing of reduce tasks whose partition's lease was granted and then
-- expired while the partition is not reduced (invariant 9): its holder froze or died
-- mid-reduce and its delivery may stay unacked, so nobody else would take the partition
-- over. Each expired grant is claimed once (`lease_republished:P` = token), so the janitors
-- of all reducers republish it once between them, and never for a task merely waiting in
-- the queue (no grant) or a lease still held.
-- KEYS: meta, reduced, lease*N (the leases of the candidate partitions, in ARGV's order).
-- ARGV[2..]: partition, token, partition, token, ... (the grants the caller saw expired)
-- Reply: the claimed partitions.
local meta, reduced, lease = K.meta, K.reduced, K.lease
if redis.call('HGET', meta, 'state') ~= 'reducing' then return {} end
local claimed = {}
for i = 0, lease.n - 1 do
  local partition, token = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  if redis.call('SISMEMBER', reduced, partition) == 0
    and redis.call('PTTL', lease[i]) <= 0
    and redis.call('HGET', meta, 'lease_granted:' .. partition) == token
    and redis.call('HGET', meta, 'lease_republished:' .. partition) ~= token then
    redis.call('HSET', meta, 'lease_republished:' .. partition, token)
    claimed[#claimed + 1] = partition
  end
end
return claimed
