#!lua
-- Extends a lease only while the caller's token still holds it. Returns 1 if renewed.
-- KEYS: lease. ARGV[2..]: token, ttl_ms
local lease = K.lease
local token, ttl_ms = ARGV[2], ARGV[3]
if redis.call('GET', lease) == token then
  redis.call('PEXPIRE', lease, ttl_ms)
  return 1
end
return 0
