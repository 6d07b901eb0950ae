-- Issue one coupon from a pool, atomically: the budgets and the shopper's limit are checked
-- and the code recorded in one step, so concurrent issuers never overspend.
-- KEYS: totals, issued, by_message, per_shopper, available, redeemed, expiring (one pool)
-- ARGV: message_id, user_id, candidate code ('' = take an imported one), record JSON,
--       face (hundredths), expires_at, source, pool budget count, pool budget value
--       (hundredths, -1 none), source budget count (-1 none), source budget value (-1 none),
--       per-shopper limit
-- Returns {'existing', code, record} (this message's code, issued before), {'issued', code,
-- record}, {'refused', reason}, or {'collision'} (a minted candidate already issued here).
local totals, issued, by_message, per_shopper, available, _, expiring = unpack(KEYS)
local mid, user, candidate, record = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local face, expires, source = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local pool_count, pool_value = tonumber(ARGV[8]), tonumber(ARGV[9])
local source_count, source_value = tonumber(ARGV[10]), tonumber(ARGV[11])
local limit = tonumber(ARGV[12])

local code = redis.call('HGET', by_message, mid)
if code then
  return {'existing', code, redis.call('HGET', issued, code)}
end

local function refuse(reason)
  redis.call('HINCRBY', totals, 'refused:' .. reason, 1)
  return {'refused', reason}
end

local t = redis.call('HMGET', totals, 'issued', 'value', 'issued:' .. source, 'value:' .. source)
local n, value = tonumber(t[1] or 0), tonumber(t[2] or 0)
local source_n, source_v = tonumber(t[3] or 0), tonumber(t[4] or 0)
if n + 1 > pool_count then return refuse('pool_count') end
if pool_value >= 0 and value + face > pool_value then return refuse('pool_value') end
if source_count >= 0 and source_n + 1 > source_count then return refuse('source_count') end
if source_value >= 0 and source_v + face > source_value then return refuse('source_value') end
if tonumber(redis.call('HGET', per_shopper, user) or 0) >= limit then
  return refuse('shopper_limit')
end

if candidate == '' then
  code = redis.call('SPOP', available)
  if not code then return refuse('pool_empty') end
else
  if redis.call('HEXISTS', issued, candidate) == 1 then return {'collision'} end
  code = candidate
end

redis.call('HSET', issued, code, record)
redis.call('HSET', by_message, mid, code)
redis.call('HINCRBY', per_shopper, user, 1)
redis.call('HINCRBY', totals, 'issued', 1)
redis.call('HINCRBY', totals, 'value', face)
redis.call('HINCRBY', totals, 'issued:' .. source, 1)
redis.call('HINCRBY', totals, 'value:' .. source, face)
redis.call('ZADD', expiring, expires, code)
return {'issued', code, record}
