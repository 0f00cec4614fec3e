-- Write a task's one result and retire it from the worker's in-flight list, atomically.
-- KEYS: 1 results, 2 inflight list, 3 notify list, 4 results expiry zset, 5 events stream,
--       6 completed counter, 7 captcha_ids hash, 8 attempts hash
-- ARGV: 1 task id, 2 result JSON, 3 raw payload, 4 notify TTL (s), 5 expire-at (unix s),
--       6 events max length, 7.. event field/value pairs
-- Returns 1 when this call wrote the result, 0 when the task already had one (a duplicate solve).
redis.call('LREM', KEYS[2], 1, ARGV[3])
redis.call('HDEL', KEYS[7], ARGV[1])
redis.call('HDEL', KEYS[8], ARGV[1])
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
redis.call('INCR', KEYS[6])
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', unpack(fields))
return 1
