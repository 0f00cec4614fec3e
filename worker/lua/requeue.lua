-- Return every task in a worker's in-flight list to the head of the queue, keeping their order.
-- KEYS: 1 inflight list, 2 tasks list, 3 attempts hash
-- ARGV: 1 "1" to count this as a failed attempt (the worker died), "0" for a graceful release
-- Returns the number of tasks moved.
local moved = 0
while true do
  local raw = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not raw then break end
  moved = moved + 1
  if ARGV[1] == '1' then
    local ok, task = pcall(cjson.decode, raw)
    if ok and type(task) == 'table' and type(task['id']) == 'string' then
      redis.call('HINCRBY', KEYS[3], task['id'], 1)
    end
  end
end
return moved
