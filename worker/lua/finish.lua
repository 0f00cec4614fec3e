-- Write a task's one result and retire it from the worker's in-flight list, atomically.
-- KEYS: 1 results, 2 inflight list, 3 notify list, 4 results expiry zset, 5 events stream,
--       6 completed counter, 7 captcha_ids hash, 8 attempts hash, 9 done stream (optional), 10 holders hash
-- ARGV: 1 task id, 2 result JSON, 3 raw payload, 4 notify TTL (s), 5 expire-at (unix s),
--       6 events max length, 7 "1" when the caller has just dead-lettered the payload (deadletter.lua took it out
--       of its in-flight list; this is its error result), else "0", 8.. event field/value pairs
-- Returns 1 when this call wrote the result, 0 when it did not: the task already had one (a duplicate solve),
-- or the caller no longer holds it (the reaper gave it to another worker, who resumes its CAPTCHA and answers).
-- The worker's ACL user has HSETNX on the results, never HSET or DEL: this script is what ties a result to a held task.
if redis.call('LREM', KEYS[2], 1, ARGV[3]) == 0 and ARGV[7] ~= '1' then
  return 0
end
redis.call('HDEL', KEYS[7], ARGV[1])
redis.call('HDEL', KEYS[8], ARGV[1])
redis.call('HDEL', KEYS[10], ARGV[1])  -- no one holds it now: a copy claimed later finds the result
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
local ttl = tonumber(ARGV[4])
-- Wake-ups: a stream waiters read without consuming it (XREAD BLOCK), and the list older producers BLPOP.
if KEYS[9] then
  redis.call('XADD', KEYS[9], '*', 'result', ARGV[2])
  redis.call('EXPIRE', KEYS[9], ttl)
end
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
-- A counter someone set to a non-integer (e.g. "nan") or to its maximum must not stop the event below: it starts
-- again at 1 (readers of the counter take a drop as a reset). Any other error (a missing permission) is raised.
local counted = redis.pcall('INCR', KEYS[6])
if type(counted) == 'table' and counted['err'] then
  local err = counted['err']
  if not (string.find(err, 'not an integer', 1, true) or string.find(err, 'overflow', 1, true)) then
    return redis.error_reply(err)
  end
  redis.call('SET', KEYS[6], 1)
end
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[6], '*', unpack(fields))
return 1
