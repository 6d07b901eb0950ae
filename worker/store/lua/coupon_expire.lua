-- Sweep a pool's codes past their expiry and never redeemed: they stop counting as
-- outstanding and count as expired (per source). The budget keeps them (config.py).
-- KEYS: totals, issued, by_message, per_shopper, available, redeemed, expiring (one pool)
-- ARGV: now, limit
-- Returns how many codes expired in this call.
local totals, issued, _, _, _, _, expiring = unpack(KEYS)
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local codes = redis.call('ZRANGEBYSCORE', expiring, '-inf', '(' .. now, 'LIMIT', 0, limit)
for _, code in ipairs(codes) do
  redis.call('ZREM', expiring, code)
  redis.call('HINCRBY', totals, 'expired', 1)
  local raw = redis.call('HGET', issued, code)
  if raw then
    redis.call('HINCRBY', totals, 'expired:' .. cjson.decode(raw).source, 1)
  end
end
return #codes
