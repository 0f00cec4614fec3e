-- Retire an unusable payload from a worker's in-flight list into the dead-letter list, atomically.
-- KEYS: 1 inflight list, 2 dead-letter list. ARGV: 1 raw payload, 2 dead-letter record (JSON)
redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
