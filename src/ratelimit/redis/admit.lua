-- gpt-api: checks and takes, atomically, what each of a batch of requests asks of its key's limits
-- (src/ratelimit/redis.rs). The same rules as src/ratelimit/memory.rs (admit_now), on Redis's clock so that
-- every node agrees: the concurrency slot first, then the budget, then the requests and tokens of the sliding
-- window; only when all allow is anything taken. The admissions of a batch run one after the other, as
-- separate calls would; a window is read once per batch and what the batch adds to it written once at the end
-- (or before the window's seconds are read for a refusal).
--
-- KEYS: 7 per gateway key in the batch (a group), g from 0: KEYS[7g+1..7g+7] 1 slots (zset: request id,
-- scored by its lease's end in ms), 2 reservations (zset: "<nanos>:<id>", likewise), 3 reserved (nano-dollars
-- reserved), 4 spent today, 5 spent this month (nano-dollars), 6 requests, 7 tokens (hashes: unix second ->
-- count, and `sum`, `oldest`, `newest`; see `total`).
-- ARGV: 1 window seconds, 2 lease ms; then 9 per admission i (from 0), ARGV[9i+3..9i+11]: 1 its group (from
-- 1), 2 request id, 3 max_concurrent (0: none), 4 reservation nanos ('': no budget), 5 day budget, 6 month
-- budget, 7 rpm, 8 tpm ('': none), 9 grant: admissions wanted beyond this one, for the node to make itself
-- until this second ends (src/ratelimit/redis/grants.rs; 0: none).
-- Answer: one per admission, {status, seconds, microseconds, spent today, spent this month, reserved,
-- requests, tokens, granted}, status 0 allowed, 1 busy (only the first three), 2 budget reached, 3 rate
-- reached; requests and tokens flat {second, count, ...} of the window before this request: every live second
-- when refused, else the window's total in its newest second; granted: the admissions counted beyond this one.

if redis.replicate_commands then
  redis.replicate_commands() -- Redis < 5: allows writes after TIME
end
local time = redis.call('TIME')
local now = tonumber(time[1])
local now_ms = now * 1000 + math.floor(tonumber(time[2]) / 1000)
local window, lease = tonumber(ARGV[1]), tonumber(ARGV[2])
-- A grant is not made in a second's last tenth (the node would have no time to use it), takes at most an eighth
-- of what the rpm leaves, and none once the tokens window is half full (tokens arrive after their requests).
local GRANT_UNTIL_US, GRANT_SHARE = 900000, 8

-- A window is a hash: unix second -> count, and three fields of its own: `sum` of the live seconds, the
-- `oldest` and `newest` of them. Its total is read in O(1) until its oldest second leaves the window; only
-- then are the seconds read, those that left deleted, and the three fields made again.
local function total(key)
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

-- The windows this batch read, by key: their totals as the batch goes (`sum`, `newest`), what is stored
-- (`stored_oldest`, `stored_newest`) and the requests the batch added and has not written yet (`added`).
local windows, order = {}, {}
local function load(key)
  local w = windows[key]
  if not w then
    local sum, oldest, newest = total(key)
    w = {key = key, sum = sum, newest = newest, stored_oldest = oldest, stored_newest = newest, added = 0}
    windows[key] = w
    order[#order + 1] = w
  end
  return w
end

-- Writes what the batch added to a requests window; its own fields and its life change only when a new
-- second starts.
local function flush(w)
  if w.added == 0 then
    return
  end
  redis.call('HINCRBY', w.key, time[1], w.added)
  redis.call('HINCRBY', w.key, 'sum', w.added)
  if w.stored_oldest == nil then
    redis.call('HSET', w.key, 'oldest', time[1])
    w.stored_oldest = now
  end
  if w.stored_newest ~= now then
    redis.call('HSET', w.key, 'newest', time[1])
    redis.call('EXPIRE', w.key, window + 1)
    w.stored_newest = now
  end
  w.added = 0
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

-- Slot sets whose expired leases were removed in this batch (the clock does not move within it).
local swept = {}

-- Admission i (from 0): its arguments from ARGV[a + 1], its group's keys from KEYS[k + 1].
local function admit(a, k)
  local id, max_concurrent, want = ARGV[a + 2], tonumber(ARGV[a + 3]), tonumber(ARGV[a + 9])
  local amount = ARGV[a + 4]
  local rpm, tpm = tonumber(ARGV[a + 7]), tonumber(ARGV[a + 8])
  local slots, reservations, reserved_key = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]

  if max_concurrent > 0 then
    if not swept[slots] then
      redis.call('ZREMRANGEBYSCORE', slots, '-inf', now_ms)
      swept[slots] = true
    end
    if redis.call('ZCARD', slots) >= max_concurrent then
      return {1, time[1], time[2]}
    end
  end

  local spent_day, spent_month, reserved = '0', '0', '0'
  if amount ~= '' then
    -- Leases of nodes that died with requests in flight: their reservations end.
    local stale = redis.call('ZRANGEBYSCORE', reservations, '-inf', now_ms)
    if #stale > 0 then
      local freed = 0
      for _, member in ipairs(stale) do
        freed = freed + (tonumber(string.match(member, '^(%d+):')) or 0)
      end
      redis.call('ZREMRANGEBYSCORE', reservations, '-inf', now_ms)
      if redis.call('DECRBY', reserved_key, string.format('%d', freed)) <= 0 then
        redis.call('DEL', reserved_key)
      end
    end
    spent_day = redis.call('GET', KEYS[k + 4]) or '0'
    spent_month = redis.call('GET', KEYS[k + 5]) or '0'
    reserved = redis.call('GET', reserved_key) or '0'
    local function reached(limit, spent)
      return limit ~= '' and tonumber(spent) + tonumber(reserved) >= tonumber(limit)
    end
    if reached(ARGV[a + 5], spent_day) or reached(ARGV[a + 6], spent_month) then
      return {2, time[1], time[2], spent_day, spent_month, reserved}
    end
  end

  local requests, tokens = nil, nil
  if rpm then
    requests = load(KEYS[k + 6])
  end
  if tpm then
    tokens = load(KEYS[k + 7])
  end
  if (requests and requests.sum >= rpm) or (tokens and tokens.sum >= tpm) then
    local request_seconds, token_seconds = {}, {}
    if requests then
      flush(requests)
      request_seconds = seconds(requests.key)
    end
    if tokens then
      token_seconds = seconds(tokens.key)
    end
    return {3, time[1], time[2], spent_day, spent_month, reserved, request_seconds, token_seconds}
  end

  if max_concurrent > 0 then
    redis.call('ZADD', slots, now_ms + lease, id)
    redis.call('PEXPIRE', slots, lease)
  end
  if amount ~= '' then
    redis.call('ZADD', reservations, now_ms + lease, amount .. ':' .. id)
    redis.call('PEXPIRE', reservations, lease)
    redis.call('INCRBY', reserved_key, amount)
    redis.call('PEXPIRE', reserved_key, lease)
  end
  local granted = 0
  if want > 0 and requests and tonumber(time[2]) < GRANT_UNTIL_US then
    granted = math.min(want, math.floor((rpm - requests.sum - 1) / GRANT_SHARE))
    if tokens and tokens.sum * 2 > tpm then
      granted = 0
    end
    granted = math.max(granted, 0)
  end
  local request_summary, token_summary = {}, {}
  if requests then
    request_summary = summary(requests.sum, requests.newest)
    requests.sum = requests.sum + 1 + granted
    requests.newest = now
    requests.added = requests.added + 1 + granted
  end
  if tokens then
    token_summary = summary(tokens.sum, tokens.newest)
  end
  return {0, time[1], time[2], spent_day, spent_month, reserved, request_summary, token_summary, granted}
end

local answers = {}
for i = 0, (#ARGV - 2) / 9 - 1 do
  local a = 2 + 9 * i
  answers[i + 1] = admit(a, 7 * (tonumber(ARGV[a + 1]) - 1))
end
for _, w in ipairs(order) do
  flush(w)
end
return answers
