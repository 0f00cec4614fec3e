-- Return one payload from a worker's in-flight list to the head of the queue, only if it is still in flight
-- (it may have been finished meanwhile: then nothing is pushed, so no task is queued twice).
-- KEYS: 1 inflight list, 2 tasks list. ARGV: 1 raw payload. Returns 1 if it was moved.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
