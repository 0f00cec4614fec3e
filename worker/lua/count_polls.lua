-- Store the poll counts of CAPTCHAs being polled, each only while the task still holds that CAPTCHA: a task
-- finished meanwhile (its record deleted) or taken over and paid afresh (another id stored) is left alone.
-- KEYS: 1 captcha_ids hash. ARGV: triples of task id, the CAPTCHA id polled, the record JSON to store.
-- Returns how many records were written.
local written = 0
for i = 1, #ARGV, 3 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if current then
    local ok, record = pcall(cjson.decode, current)
    if ok and type(record) == 'table' and record['captcha_id'] == ARGV[i + 1] then
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
      written = written + 1
    end
  end
end
return written
