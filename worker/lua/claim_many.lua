-- Atomically move up to ARGV[2] tasks from the head of the queue to the tail of a worker's in-flight list,
-- refusing every payload longer than the worker's limit from its length, before anyone parses it: such a
-- payload never reaches the worker. It is dead-lettered here (its first bytes, its length, why) and, when a
-- bounded scan of its top level reads a usable task id, replaced in the in-flight list by a small stub holding
-- that id, which the worker answers with an error result and retires like any task.
-- KEYS: 1 tasks list, 2 the worker's in-flight list, 3 dead-letter list
-- ARGV: 1 mode: "claim" (move from the queue) or "tail" (screen the payload a BLMOVE just put at the tail of
--       the in-flight list; ARGV[2] is then its length), 2 count or length, 3 max payload bytes, 4 worker id
-- Returns {payloads dead-lettered here without an id, claimed payload or stub, ...}, oldest first; in "tail"
-- mode {-1} when the tail is not that oversized payload any more (the reaper requeued it: not ours to screen).
-- Only commands the worker's ACL already allows on these keys: LMOVE, LREM, LRANGE, LPUSH (no LPOP, RPUSH).
local STUB_KEY = 'captcha_fleet:oversized'
local MAX_ID_CHARS = 256
local MAX_ID_BYTES = 4 * MAX_ID_CHARS
local HEAD_BYTES = 1024
-- Scanner budget: tokens outside strings, escaped quotes inside them, and a scalar's or a backslash run's length.
-- Strings are skipped with a plain find (memchr), so a 20 MB base64 value costs one step.
local MAX_STEPS = 20000
local MAX_RUN = 256

local function string_end(s, open, steps)
  -- Index of the quote closing the string opened at ``open`` (nil when absent or too costly), and the steps.
  local from = open + 1
  while true do
    local close = string.find(s, '"', from, true)
    if not close then return nil, steps end
    local b = close - 1
    while b > open and string.byte(s, b) == 92 do
      b = b - 1
      if close - b > MAX_RUN then return nil, steps end
    end
    if (close - 1 - b) % 2 == 0 then return close, steps end
    steps = steps + 1
    if steps > MAX_STEPS then return nil, steps end
    from = close + 1
  end
end

local function top_level_id(s)
  -- The JSON literal of the last top-level "id" whose value is a string, or nil (bounded work; never errors).
  local pos = string.find(string.sub(s, 1, MAX_RUN), '[^ \t\r\n]')
  if not pos or string.byte(s, pos) ~= 123 then return nil end
  pos = pos + 1
  local depth, expect, key_is_id, found, steps = 1, 'key', false, nil, 0
  local n = #s
  while pos <= n do
    steps = steps + 1
    if steps > MAX_STEPS then return found end
    local c = string.byte(s, pos)
    if c == 32 or c == 9 or c == 10 or c == 13 then
      local stop = string.find(string.sub(s, pos, pos + MAX_RUN), '[^ \t\r\n]')
      if not stop then return found end
      pos = pos + stop - 1
    elseif c == 34 then
      local close
      close, steps = string_end(s, pos, steps)
      if not close then return found end
      if depth == 1 and expect == 'key' then
        key_is_id = close == pos + 3 and string.sub(s, pos + 1, pos + 2) == 'id'
        expect = 'colon'
      elseif depth == 1 and expect == 'value' then
        if key_is_id then
          found = close - pos < MAX_ID_BYTES * 6 and string.sub(s, pos, close) or nil
        end
        expect = 'comma'
      end
      pos = close + 1
    elseif c == 123 or c == 91 then
      if depth == 1 then
        if key_is_id then found = nil end
        expect = 'comma'
      end
      depth = depth + 1
      pos = pos + 1
    elseif c == 125 or c == 93 then
      depth = depth - 1
      if depth == 0 then return found end
      pos = pos + 1
    elseif c == 58 then
      if depth == 1 then expect = 'value' end
      pos = pos + 1
    elseif c == 44 then
      if depth == 1 then expect, key_is_id = 'key', false end
      pos = pos + 1
    else
      local token = string.match(string.sub(s, pos, pos + MAX_RUN), '^[^ \t\r\n{}%[%]",:]+')
      if not token or #token > MAX_RUN then return found end
      if depth == 1 then
        if key_is_id then found = nil end
        expect = 'comma'
      end
      pos = pos + #token
    end
  end
  return found
end

local function utf8_clean(s)
  -- ``s`` with every byte that is not part of a well-formed UTF-8 sequence (surrogates included) made '?',
  -- and whether it already was well-formed.
  local out, i, n, clean = {}, 1, #s, true
  while i <= n do
    local c = string.byte(s, i)
    local len, lo, hi = 0, 128, 191
    if c < 128 then len = 1
    elseif c >= 194 and c <= 223 then len = 2
    elseif c >= 224 and c <= 239 then
      len = 3
      if c == 224 then lo = 160 elseif c == 237 then hi = 159 end
    elseif c >= 240 and c <= 244 then
      len = 4
      if c == 240 then lo = 144 elseif c == 244 then hi = 143 end
    end
    local ok = len > 0 and i + len - 1 <= n
    if ok and len > 1 then
      local second = string.byte(s, i + 1)
      ok = second >= lo and second <= hi
      for k = i + 2, i + len - 1 do
        local b = string.byte(s, k)
        ok = ok and b >= 128 and b <= 191
      end
    end
    if ok then
      out[#out + 1] = string.sub(s, i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = '?'
      clean = false
      i = i + 1
    end
  end
  return table.concat(out), clean
end

local function usable_id(literal)
  -- The decoded id when it could be a result's field: a non-empty, well-formed UTF-8 string of at most
  -- MAX_ID_CHARS characters (as worker/task.py's _usable_id decides for a payload it parses).
  if not literal then return nil end
  local ok, id = pcall(cjson.decode, literal)
  if not ok or type(id) ~= 'string' or #id == 0 or #id > MAX_ID_BYTES then return nil end
  local _, clean = utf8_clean(id)
  local _, chars = string.gsub(id, '[^\128-\191]', '')
  if not clean or chars > MAX_ID_CHARS then return nil end
  return id
end

local function refuse(raw, limit)
  -- Take an oversized payload out of the in-flight list (it was just moved to its tail) into the dead-letter
  -- list (its first bytes, its length, why); returns the stub to claim in its place when it has a usable id.
  redis.call('LREM', KEYS[2], -1, raw)
  local size = #raw
  local id = usable_id(top_level_id(raw))
  local head = utf8_clean(string.sub(raw, 1, HEAD_BYTES))
  raw = nil
  local now = redis.call('TIME')
  local reason = 'payload of ' .. size .. ' bytes exceeds the limit of ' .. limit .. ' bytes; refused unread'
  if not id then reason = reason .. ', and no usable top-level "id" was found in it' end
  redis.call('LPUSH', KEYS[3], cjson.encode({
    reason = reason, task_id = id or cjson.null, worker = ARGV[4],
    ts = tonumber(now[1]) + tonumber(now[2]) / 1e6, raw = head, raw_bytes = size,
  }))
  if not id then return nil end
  return cjson.encode({id = id, [STUB_KEY] = {bytes = size, limit = limit}})
end

local function claim_stub(stub)
  -- The worker's ACL grants no RPUSH on in-flight lists: the stub goes through the queue's head, as any claim.
  redis.call('LPUSH', KEYS[1], stub)
  return redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
end

local limit = tonumber(ARGV[3])
local reply = {0}
local refused = false

local function screen(raw)
  if #raw <= limit then
    reply[#reply + 1] = raw
    return
  end
  refused = true
  local stub = refuse(raw, limit)
  if stub then
    reply[#reply + 1] = claim_stub(stub)
  else
    reply[1] = reply[1] + 1
  end
end

local function forget()
  -- An oversized payload's copy in this script is garbage once screened: free it now, not after 64 of them.
  if refused then
    collectgarbage('collect')
    refused = false
  end
end

if ARGV[1] == 'tail' then
  local tail = redis.call('LRANGE', KEYS[2], -1, -1)[1]
  if not tail or #tail ~= tonumber(ARGV[2]) or #tail <= limit then return {-1} end
  screen(tail)
  tail = nil
  forget()
else
  for _ = 1, tonumber(ARGV[2]) do
    local raw = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
    if not raw then break end
    screen(raw)
    raw = nil
    forget()
  end
end
return reply
