-- Redeem an issued coupon exactly once.
-- KEYS: totals, issued, by_message, per_shopper, available, redeemed, expiring (one pool)
-- ARGV: code, user_id ('' = whoever holds it), ref (order or event id; '' = none), now,
--       basket (-1 = not given)
-- Returns {'redeemed', record, redemption}, {'again', record, redemption} (the same ref
-- redeemed it before: a retried call), or {'refused', reason, record, redemption}.
local totals, issued, _, _, _, redeemed, expiring = unpack(KEYS)
local code, user, ref = ARGV[1], ARGV[2], ARGV[3]
local now, basket = tonumber(ARGV[4]), tonumber(ARGV[5])

local raw = redis.call('HGET', issued, code)
if not raw then return {'refused', 'not_issued', '', ''} end
local prior = redis.call('HGET', redeemed, code)
if prior then
  if ref ~= '' and cjson.decode(prior).ref == ref then return {'again', raw, prior} end
  return {'refused', 'used', raw, prior}
end
local rec = cjson.decode(raw)
if user ~= '' and rec.user_id ~= user then return {'refused', 'foreign', raw, ''} end
if now >= rec.expires_at then return {'refused', 'expired', raw, ''} end
local minimum = rec.offer.min_basket
if basket >= 0 and type(minimum) == 'number' and basket < minimum then
  return {'refused', 'below_minimum', raw, ''}
end

local redemption = cjson.encode({at = now, ref = ref, basket = basket})
redis.call('HSET', redeemed, code, redemption)
redis.call('ZREM', expiring, code)
redis.call('HINCRBY', totals, 'redeemed', 1)
redis.call('HINCRBY', totals, 'redeemed:' .. rec.source, 1)
redis.call('HINCRBY', totals, 'redeemed_value', rec.face)
redis.call('HINCRBY', totals, 'redeemed_value:' .. rec.source, rec.face)
return {'redeemed', raw, redemption}
