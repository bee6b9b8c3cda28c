#!lua
-- Claims the republishing of reduce tasks whose partition's lease was granted and then
-- expired while the partition is not reduced (invariant 9): its holder froze or died
-- mid-reduce and its delivery may stay unacked, so nobody else would take the partition
-- over. An expired grant is claimed once (`lease_republished:P` = token, at
-- `lease_republished_ms:P`), so the janitors of all reducers republish it once between
-- them, and never for a task merely waiting in the queue (no grant) or a lease still held;
-- again only if no new grant came `again_after_ms` later (the republished task was
-- prefetched by a frozen reducer too, and nobody took the partition).
-- KEYS: meta, reduced, lease*N (the leases of the candidate partitions, in ARGV's order).
-- ARGV[2..]: now_ms, again_after_ms, then partition, token, partition, token, ... (the
-- grants the caller saw expired)
-- Reply: the claimed partitions.
local meta, reduced, lease = K.meta, K.reduced, K.lease
local now, again_after = tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('HGET', meta, 'state') ~= 'reducing' then return {} end
local claimed = {}
for i = 0, lease.n - 1 do
  local partition, token = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  local republished = redis.call('HGET', meta, 'lease_republished:' .. partition)
  local republished_ms =
    tonumber(redis.call('HGET', meta, 'lease_republished_ms:' .. partition)) or 0
  if redis.call('SISMEMBER', reduced, partition) == 0
    and redis.call('PTTL', lease[i]) <= 0
    and redis.call('HGET', meta, 'lease_granted:' .. partition) == token
    and (republished ~= token or now - republished_ms >= again_after) then
    redis.call('HSET', meta, 'lease_republished:' .. partition, token,
      'lease_republished_ms:' .. partition, now)
    claimed[#claimed + 1] = partition
  end
end
return claimed
