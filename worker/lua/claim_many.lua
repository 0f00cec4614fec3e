-- Atomically move up to ARGV[1] tasks from the head of the queue to the tail of a worker's in-flight list.
-- KEYS[1] = {prefix}:tasks, KEYS[2] = {prefix}:inflight:<worker>
-- Returns the moved payloads, oldest first.
local claimed = {}
for _ = 1, tonumber(ARGV[1]) do
  local raw = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not raw then break end
  claimed[#claimed + 1] = raw
end
return claimed
