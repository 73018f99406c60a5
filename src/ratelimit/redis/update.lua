-- gpt-api: one update after admission (src/ratelimit/redis/updates.rs sends them in batches). ARGV[1] names it.
--   end     KEYS slots;                                  ARGV id
--   tokens  KEYS tokens;                                 ARGV count, ttl (the window's form: admit.lua)
--   settle  KEYS reservations, reserved, day, month;     ARGV member, nanos, cost, day ttl, month ttl
--   seed    KEYS day marker, day, month marker, month;   ARGV day nanos, month nanos, day ttl, month ttl
--   undo    KEYS slots, reservations, reserved, requests; ARGV id, member, nanos, second, count
-- (an admission whose caller had given up: what it took is given back; or what a node's grant left unused)
-- A member '' is no reservation; spend keys live for a TTL past their period.

local op = ARGV[1]

local function release(reservations, reserved, member, nanos)
  if member ~= '' and redis.call('ZREM', reservations, member) == 1 then
    if redis.call('DECRBY', reserved, nanos) <= 0 then
      redis.call('DEL', reserved)
    end
  end
end

local function add(key, nanos, ttl)
  if nanos ~= '0' then
    redis.call('INCRBY', key, nanos)
    redis.call('EXPIRE', key, ttl)
  end
end

if op == 'end' then
  redis.call('ZREM', KEYS[1], ARGV[2])
elseif op == 'tokens' then
  if redis.replicate_commands then
    redis.replicate_commands()
  end
  local now = redis.call('TIME')[1]
  redis.call('HINCRBY', KEYS[1], now, ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'sum', ARGV[2])
  redis.call('HSETNX', KEYS[1], 'oldest', now)
  redis.call('HSET', KEYS[1], 'newest', now)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
elseif op == 'settle' then
  release(KEYS[1], KEYS[2], ARGV[2], ARGV[3])
  add(KEYS[3], ARGV[4], ARGV[5])
  add(KEYS[4], ARGV[4], ARGV[6])
elseif op == 'seed' then
  -- Only into a Redis that holds no spend of this key for the period: the first node to start seeds it.
  if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[4]) then
    add(KEYS[2], ARGV[2], ARGV[4])
  end
  if redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[5]) then
    add(KEYS[4], ARGV[3], ARGV[5])
  end
elseif op == 'undo' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  release(KEYS[2], KEYS[3], ARGV[3], ARGV[4])
  if ARGV[5] ~= '' and redis.call('HEXISTS', KEYS[4], ARGV[5]) == 1 then
    local count = tonumber(ARGV[6])
    local left = redis.call('HINCRBY', KEYS[4], ARGV[5], -count)
    redis.call('HINCRBY', KEYS[4], 'sum', -count - math.min(left, 0))
    if left <= 0 then
      redis.call('HDEL', KEYS[4], ARGV[5])
    end
  end
else
  return redis.error_reply('unknown update ' .. tostring(op))
end
return 1
