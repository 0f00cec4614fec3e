-- Take a just-claimed payload as its task's holder, unless it is a second copy of a task someone holds now.
-- A task can sit in the queue twice: a producer's RPUSH retried after its reply was lost (the primary froze after
-- replicating the push, and the retry pushed the same bytes on the promoted replica), or the same id submitted
-- again. Two copies claimed within a submit's time of each other were both paid for. The holders hash names who
-- holds each task; a copy is dropped (taken out of our in-flight list, never solved) while that holder's in-flight
-- list still has the same payload, or ours has it twice. Otherwise we become the holder: a holder that finished
-- deleted the entry (finish.lua), and one that died or released the task no longer has it in its list.
-- KEYS: 1 holders hash, 2 our in-flight list, 3 attempts hash, 4 captcha_ids hash, 5 results hash
-- ARGV: 1 task id, 2 raw payload, 3 our worker id, 4 the in-flight lists' key prefix ("<prefix>:inflight:")
-- Returns {1} for a dropped copy, else {0, requeue count or false, stored CAPTCHA or false, result exists (0/1)}.
-- The holder's list is named at run time (standalone Redis and Sentinel sets only, as the fleet is deployed).
local holder = redis.call('HGET', KEYS[1], ARGV[1])
if holder then
  local copy
  if holder == ARGV[3] then
    copy = #redis.call('LPOS', KEYS[2], ARGV[2], 'COUNT', 2) > 1
  else
    copy = redis.call('LPOS', ARGV[4] .. holder, ARGV[2]) ~= false
  end
  if copy then
    redis.call('LREM', KEYS[2], -1, ARGV[2])  -- the copy just claimed: the last one in our list
    return {1}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return {
  0,
  redis.call('HGET', KEYS[3], ARGV[1]),
  redis.call('HGET', KEYS[4], ARGV[1]),
  redis.call('HEXISTS', KEYS[5], ARGV[1]),
}
