-- Apply one activity event to one shopper's state, atomically and at most once.
-- KEYS: profile, recent, cart, cart_added, purchased, purchase_counts, affinity,
--       seen, pending, purchase_first, interests  (all in the shopper's hash slot)
-- ARGV: event_id, type, item_id|'', ts, quantity, price|'', category|'',
--       affinity_increment, now, recent_max, dedup_window_s, dedup_max, user_ttl_s,
--       recent_entry_json
--       delivery_id (the task id: the same for a retry or redelivery of one message)
--       interest_window_s, cart_max (distinct items; the oldest-added go first)
-- Returns 0 duplicate, 1 applied, 2 applied earlier by this same delivery but its global
-- side effects (log, trending) were not confirmed: the caller redoes them. A copy of
-- the event in another message, racing the first, is a duplicate: only the delivery
-- that applied an event finishes it.
local profile, recent, cart, cart_added, purchased, purchase_counts, affinity, seen, pending =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local purchase_first, interests = KEYS[10], KEYS[11]
local interest_window, cart_max = tonumber(ARGV[16]), tonumber(ARGV[17])
local event_id, etype, item = ARGV[1], ARGV[2], ARGV[3]
local ts, qty = tonumber(ARGV[4]), tonumber(ARGV[5])
local price, category, affinity_inc = ARGV[6], ARGV[7], tonumber(ARGV[8])
local now, recent_max = tonumber(ARGV[9]), tonumber(ARGV[10])
local window, dedup_max, ttl = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])

if redis.call('ZSCORE', seen, event_id) then
  if redis.call('HGET', pending, event_id) == ARGV[15] then return 2 end
  return 0
end
redis.call('ZREMRANGEBYSCORE', seen, '-inf', now - window)
redis.call('ZADD', seen, now, event_id)
local extra = redis.call('ZCARD', seen) - dedup_max
if extra > 0 then redis.call('ZREMRANGEBYRANK', seen, 0, extra - 1) end
redis.call('HSET', pending, event_id, ARGV[15])

redis.call('HSETNX', profile, 'first_seen', ts)
local last_seen = tonumber(redis.call('HGET', profile, 'last_seen') or '0')
if ts > last_seen then
  redis.call('HSET', profile, 'last_seen', ts, 'last_event', etype)
end
redis.call('HINCRBY', profile, 'events', 1)
redis.call('LPUSH', recent, ARGV[14])
redis.call('LTRIM', recent, 0, recent_max - 1)

if (etype == 'view' or etype == 'add_to_cart') and item ~= '' then
  redis.call('ZADD', interests, 'GT', ts, item)
  redis.call('ZREMRANGEBYSCORE', interests, '-inf', '(' .. (now - interest_window))
end
if etype == 'add_to_cart' then
  redis.call('HINCRBY', cart, item, qty)
  redis.call('ZADD', cart_added, 'GT', ts, item)
  -- Evict the oldest in chunks: unpack() fails beyond a few thousand values, and a cart
  -- filled before the cap existed may be that large.
  local over = redis.call('ZCARD', cart_added) - cart_max
  while over > 0 do
    local oldest = redis.call('ZRANGE', cart_added, 0, math.min(over, 1000) - 1)
    if #oldest == 0 then break end
    redis.call('ZREM', cart_added, unpack(oldest))
    redis.call('HDEL', cart, unpack(oldest))
    over = over - #oldest
  end
elseif etype == 'remove_from_cart' then
  if redis.call('HINCRBY', cart, item, -qty) <= 0 then
    redis.call('HDEL', cart, item)
    redis.call('ZREM', cart_added, item)
  end
elseif etype == 'purchase' then
  redis.call('HINCRBY', purchase_counts, item, 1)
  local first = tonumber(redis.call('HGET', purchase_first, item) or '-1')
  if first < 0 or ts < first then redis.call('HSET', purchase_first, item, ts) end
  redis.call('ZADD', purchased, 'GT', ts, item)
  redis.call('HDEL', cart, item)
  redis.call('ZREM', cart_added, item)
  redis.call('HINCRBY', profile, 'orders', 1)
  if price ~= '' then
    redis.call('HINCRBYFLOAT', profile, 'monetary', tonumber(price) * qty)
  end
  local last_purchase = tonumber(redis.call('HGET', profile, 'last_purchase') or '0')
  if ts > last_purchase then redis.call('HSET', profile, 'last_purchase', ts) end
end
if category ~= '' and affinity_inc ~= 0 then
  redis.call('ZINCRBY', affinity, affinity_inc, category)
end
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ttl) end
return 1
