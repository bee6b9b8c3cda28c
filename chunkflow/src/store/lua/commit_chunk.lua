#!lua
-- A chunk's job step (invariants 3, 5, 11), after its partition steps wrote its partials:
-- checks the job is running, adds the chunk to the done set and, only if it was not there,
-- adds its counters and counts its non-empty outputs per partition (`outputs:P`); the job
-- step of the last chunk of a sealed job moves it to reducing.
-- KEYS: meta, done, counters, stats.
-- ARGV[2..]: chunk, now_ms, redelivered (0/1), n_counters, (name, value) * n_counters,
--            then the partitions the chunk has a non-empty output for
local meta, done, counters, stats = K.meta, K.done, K.counters, K.stats
local chunk, now, redelivered = ARGV[2], ARGV[3], ARGV[4]
local n_counters = tonumber(ARGV[5])
local first_partition = 6 + 2 * n_counters
local record = redis.call('HMGET', meta, 'state', 'total', 'partitions')
local state, total = record[1], record[2]
if not state then return {'missing'} end
local partitions = tonumber(record[3])
for i = first_partition, #ARGV do
  if tonumber(ARGV[i]) >= partitions then
    error('commit of chunk ' .. chunk .. ': partition ' .. ARGV[i] .. ' is beyond the job\'s ' ..
      partitions .. ' partitions')
  end
end
if state == 'running' or state == 'reducing' then
  redis.call('HINCRBY', stats, 'deliveries', 1)
  if redelivered == '1' then redis.call('HINCRBY', stats, 'redeliveries', 1) end
end
if state ~= 'running' then return {'not_running', state} end
if total and tonumber(chunk) >= tonumber(total) then return {'out_of_range', total} end
if redis.call('SADD', done, chunk) == 0 then
  redis.call('HINCRBY', stats, 'duplicates', 1)
  return {'duplicate'}
end
-- The done set and the commit count move together; if they disagree, Redis lost keys.
local committed = redis.call('HINCRBY', meta, 'committed', 1)
local members = redis.call('SCARD', done)
if members ~= committed then
  return {'lost', 'the set of committed chunks has ' .. members .. ' members but ' .. committed .. ' commits were recorded'}
end
for i = 1, n_counters do
  redis.call('HINCRBY', counters, ARGV[4 + 2 * i], ARGV[5 + 2 * i])
end
-- Only non-empty partials are stored (tiny chunks touch few partitions); the job record
-- counts them per partition so a reducer can tell a lost hash from an empty one.
for i = first_partition, #ARGV do
  redis.call('HINCRBY', meta, 'outputs:' .. ARGV[i], 1)
end
redis.call('HSET', meta, 'updated_ms', now)
if total and members == tonumber(total) then
  redis.call('HSET', meta, 'state', 'reducing', 'reducing_ms', now)
  return {'completed'}
end
return {'committed'}
