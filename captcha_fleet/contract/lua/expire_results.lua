-- Delete up to ARGV[2] results whose retention ended before ARGV[1] (unix s).
-- KEYS: 1 results hash, 2 results expiry zset. Returns the number deleted.
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return 0 end
redis.call('HDEL', KEYS[1], unpack(ids))
redis.call('ZREM', KEYS[2], unpack(ids))
return #ids
