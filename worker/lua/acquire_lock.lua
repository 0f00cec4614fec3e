-- Take or renew a lock: succeed if free or already ours. KEYS[1] lock; ARGV: 1 token, 2 TTL ms.
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
