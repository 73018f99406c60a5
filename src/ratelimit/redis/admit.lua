-- gpt-api: checks and takes, atomically, what each of a batch of requests asks of its key's limits
-- (src/ratelimit/redis.rs). The same rules as src/ratelimit/memory.rs (admit_now), on Redis's clock so that
-- every node agrees: the concurrency slot first, then the budget, then the requests and tokens of the sliding
-- window; only when all allow is anything taken. The admissions of a batch run one after the other, as
-- separate calls would.
--
-- Per admission i (from 0), KEYS[7i+1..7i+7]: 1 slots (zset: request id, scored by its lease's end in ms),
-- 2 reservations (zset: "<nanos>:<id>", likewise), 3 reserved (nano-dollars reserved), 4 spent today,
-- 5 spent this month (nano-dollars), 6 requests, 7 tokens (hashes: unix second -> count, and `sum`, `oldest`,
-- `newest`; see `total`). ARGV[9i+1..9i+9]: 1 request id, 2 max_concurrent (0: none), 3 lease ms,
-- 4 reservation nanos ('': no budget), 5 day budget, 6 month budget, 7 rpm, 8 tpm ('': none), 9 window
-- seconds.
-- Answer: one per admission, {status, seconds, microseconds, spent today, spent this month, reserved,
-- requests, tokens}, status 0 allowed, 1 busy (only the first three), 2 budget reached, 3 rate reached;
-- requests and tokens flat {second, count, ...} of the window before this request: every live second when
-- refused, else the window's total in its newest second.

if redis.replicate_commands then
  redis.replicate_commands() -- Redis < 5: allows writes after TIME
end
local time = redis.call('TIME')
local now = tonumber(time[1])
local now_ms = now * 1000 + math.floor(tonumber(time[2]) / 1000)

-- A window is a hash: unix second -> count, and three fields of its own: `sum` of the live seconds, the
-- `oldest` and `newest` of them. Its total is read in O(1) until its oldest second leaves the window; only
-- then are the seconds read, those that left deleted, and the three fields made again.
local function total(key, window)
  local head = redis.call('HMGET', key, 'sum', 'oldest', 'newest')
  local sum, oldest, newest = tonumber(head[1]) or 0, tonumber(head[2]), tonumber(head[3])
  if oldest == nil or oldest > now - window then
    return sum, oldest, newest
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
  return sum, oldest, newest
end

-- Every live second as {second, count, ...} (for a refusal's retry time).
local function seconds(key, window)
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

local function admit(K, A)
  local id, max_concurrent, lease = A[1], tonumber(A[2]), tonumber(A[3])
  local amount = A[4]
  local rpm, tpm, window = tonumber(A[7]), tonumber(A[8]), tonumber(A[9])

  if max_concurrent > 0 then
    redis.call('ZREMRANGEBYSCORE', K[1], '-inf', now_ms)
    if redis.call('ZCARD', K[1]) >= max_concurrent then
      return {1, time[1], time[2]}
    end
  end

  local spent_day, spent_month, reserved = '0', '0', '0'
  if amount ~= '' then
    -- Leases of nodes that died with requests in flight: their reservations end.
    local stale = redis.call('ZRANGEBYSCORE', K[2], '-inf', now_ms)
    if #stale > 0 then
      local freed = 0
      for _, member in ipairs(stale) do
        freed = freed + (tonumber(string.match(member, '^(%d+):')) or 0)
      end
      redis.call('ZREMRANGEBYSCORE', K[2], '-inf', now_ms)
      if redis.call('DECRBY', K[3], string.format('%d', freed)) <= 0 then
        redis.call('DEL', K[3])
      end
    end
    spent_day = redis.call('GET', K[4]) or '0'
    spent_month = redis.call('GET', K[5]) or '0'
    reserved = redis.call('GET', K[3]) or '0'
    local function reached(limit, spent)
      return limit ~= '' and tonumber(spent) + tonumber(reserved) >= tonumber(limit)
    end
    if reached(A[5], spent_day) or reached(A[6], spent_month) then
      return {2, time[1], time[2], spent_day, spent_month, reserved}
    end
  end

  local request_total, oldest_request, newest_request = 0, nil, nil
  local token_total, newest_token = 0, nil
  if rpm then
    request_total, oldest_request, newest_request = total(K[6], window)
  end
  if tpm then
    local _
    token_total, _, newest_token = total(K[7], window)
  end
  if (rpm and request_total >= rpm) or (tpm and token_total >= tpm) then
    local requests, tokens = {}, {}
    if rpm then
      requests = seconds(K[6], window)
    end
    if tpm then
      tokens = seconds(K[7], window)
    end
    return {3, time[1], time[2], spent_day, spent_month, reserved, requests, tokens}
  end

  if max_concurrent > 0 then
    redis.call('ZADD', K[1], now_ms + lease, id)
    redis.call('PEXPIRE', K[1], lease)
  end
  if amount ~= '' then
    redis.call('ZADD', K[2], now_ms + lease, amount .. ':' .. id)
    redis.call('PEXPIRE', K[2], lease)
    redis.call('INCRBY', K[3], amount)
    redis.call('PEXPIRE', K[3], lease)
  end
  if rpm then
    redis.call('HINCRBY', K[6], time[1], 1)
    redis.call('HINCRBY', K[6], 'sum', 1)
    -- The window's own fields and its life change only when a new second starts.
    if oldest_request == nil then
      redis.call('HSET', K[6], 'oldest', time[1])
    end
    if newest_request ~= now then
      redis.call('HSET', K[6], 'newest', time[1])
      redis.call('EXPIRE', K[6], window + 1)
    end
  end
  local requests = summary(request_total, newest_request)
  local tokens = summary(token_total, newest_token)
  return {0, time[1], time[2], spent_day, spent_month, reserved, requests, tokens}
end

local answers = {}
for i = 0, #KEYS / 7 - 1 do
  answers[i + 1] = admit({unpack(KEYS, 7 * i + 1, 7 * i + 7)}, {unpack(ARGV, 9 * i + 1, 9 * i + 9)})
end
return answers
