-- gpt-api: checks and takes, atomically, what one request asks of its key's limits (src/ratelimit/redis.rs).
-- The same rules as src/ratelimit/memory.rs (admit_now), on Redis's clock so that every node agrees: the
-- concurrency slot first, then the budget, then the requests and tokens of the sliding window; only when all
-- allow is anything taken.
--
-- KEYS: 1 slots (zset: request id, scored by its lease's end in ms), 2 reservations (zset: "<nanos>:<id>",
-- likewise), 3 reserved (nano-dollars reserved), 4 spent today, 5 spent this month (nano-dollars),
-- 6 requests, 7 tokens (hashes: unix second -> count, and `sum`, `oldest`, `newest`; see `total`).
-- ARGV: 1 request id, 2 max_concurrent (0: none), 3 lease ms, 4 reservation nanos ('': no budget),
-- 5 day budget, 6 month budget, 7 rpm, 8 tpm ('': none), 9 window seconds.
-- Answer: {status, seconds, microseconds, spent today, spent this month, reserved, requests, tokens}, status
-- 0 allowed, 1 busy (only the first three), 2 budget reached, 3 rate reached; requests and tokens flat
-- {second, count, ...} of the window before this request: every live second when refused, else the window's
-- total in its newest second.

if redis.replicate_commands then
  redis.replicate_commands() -- Redis < 5: allows writes after TIME
end
local time = redis.call('TIME')
local now = tonumber(time[1])
local now_ms = now * 1000 + math.floor(tonumber(time[2]) / 1000)
local id, max_concurrent, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local amount = ARGV[4]
local rpm, tpm, window = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])

if max_concurrent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
  if redis.call('ZCARD', KEYS[1]) >= max_concurrent then
    return {1, time[1], time[2]}
  end
end

local spent_day, spent_month, reserved = '0', '0', '0'
if amount ~= '' then
  -- Leases of nodes that died with requests in flight: their reservations end.
  local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms)
  if #stale > 0 then
    local freed = 0
    for _, member in ipairs(stale) do
      freed = freed + (tonumber(string.match(member, '^(%d+):')) or 0)
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
    if redis.call('DECRBY', KEYS[3], string.format('%d', freed)) <= 0 then
      redis.call('DEL', KEYS[3])
    end
  end
  spent_day = redis.call('GET', KEYS[4]) or '0'
  spent_month = redis.call('GET', KEYS[5]) or '0'
  reserved = redis.call('GET', KEYS[3]) or '0'
  local function reached(limit, spent)
    return limit ~= '' and tonumber(spent) + tonumber(reserved) >= tonumber(limit)
  end
  if reached(ARGV[5], spent_day) or reached(ARGV[6], spent_month) then
    return {2, time[1], time[2], spent_day, spent_month, reserved}
  end
end

-- A window is a hash: unix second -> count, and three fields of its own: `sum` of the live seconds, the
-- `oldest` and `newest` of them. Its total is read in O(1) until its oldest second leaves the window; only
-- then are the seconds read, those that left deleted, and the three fields made again.
local function total(key)
  local head = redis.call('HMGET', key, 'sum', 'oldest', 'newest')
  local sum, oldest, newest = tonumber(head[1]) or 0, tonumber(head[2]), tonumber(head[3])
  if oldest == nil or oldest > now - window then
    return sum, newest
  end
  local flat = redis.call('HGETALL', key)
  local old = {}
  sum, oldest, newest = 0, nil, nil
  for i = 1, #flat, 2 do
    local second = tonumber(flat[i])
    if second and second > now - window then
      sum = sum + (tonumber(flat[i + 1]) or 0)
      oldest = math.min(oldest or second, second)
      newest = math.max(newest or second, second)
    elseif second then
      old[#old + 1] = flat[i]
    end
  end
  if #old > 0 then
    redis.call('HDEL', key, unpack(old))
  end
  if oldest then
    redis.call('HSET', key, 'sum', sum, 'oldest', oldest, 'newest', newest)
  else
    redis.call('DEL', key)
  end
  return sum, newest
end

-- Every live second as {second, count, ...} (for a refusal's retry time).
local function seconds(key)
  local flat = redis.call('HGETALL', key)
  local out = {}
  for i = 1, #flat, 2 do
    local second = tonumber(flat[i])
    if second and second > now - window then
      out[#out + 1] = flat[i]
      out[#out + 1] = flat[i + 1]
    end
  end
  return out
end

-- What an admission reports of a window: its total as if all in its newest second (enough for what is left
-- and when it resets).
local function summary(sum, newest)
  if newest and sum > 0 then
    return {newest, sum}
  end
  return {}
end

local request_total, newest_request, token_total, newest_token = 0, nil, 0, nil
if rpm then
  request_total, newest_request = total(KEYS[6])
end
if tpm then
  token_total, newest_token = total(KEYS[7])
end
if (rpm and request_total >= rpm) or (tpm and token_total >= tpm) then
  local requests, tokens = {}, {}
  if rpm then
    requests = seconds(KEYS[6])
  end
  if tpm then
    tokens = seconds(KEYS[7])
  end
  return {3, time[1], time[2], spent_day, spent_month, reserved, requests, tokens}
end

if max_concurrent > 0 then
  redis.call('ZADD', KEYS[1], now_ms + lease, id)
  redis.call('PEXPIRE', KEYS[1], lease)
end
if amount ~= '' then
  redis.call('ZADD', KEYS[2], now_ms + lease, amount .. ':' .. id)
  redis.call('PEXPIRE', KEYS[2], lease)
  redis.call('INCRBY', KEYS[3], amount)
  redis.call('PEXPIRE', KEYS[3], lease)
end
if rpm then
  redis.call('HINCRBY', KEYS[6], time[1], 1)
  redis.call('HINCRBY', KEYS[6], 'sum', 1)
  redis.call('HSETNX', KEYS[6], 'oldest', time[1])
  redis.call('HSET', KEYS[6], 'newest', time[1])
  redis.call('EXPIRE', KEYS[6], window + 1)
end
local requests = summary(request_total, newest_request)
local tokens = summary(token_total, newest_token)
return {0, time[1], time[2], spent_day, spent_month, reserved, requests, tokens}
