-- Apply one activity event to one shopper's state, atomically and at most once.
-- KEYS: profile, recent, cart, cart_added, purchased, purchase_counts, affinity,
--       seen, pending, purchase_first, interests, history, history_sums
--       (all in the shopper's hash slot), and on a single node the item's catalog hash
--       (the event's category and, unless the event names one, its price are read
--       from it; a cluster's caller reads them first and passes them)
-- ARGV: event_id, type, item_id|'', ts, quantity, price|'', category|'',
--       affinity_increment (added to the category's affinity when there is one), now,
--       recent_max, dedup_window_s, dedup_max, user_ttl_s,
--       recent_entry_json (without the category: added here when there is one)
--       delivery_id (the task id: the same for a retry or redelivery of one message)
--       interest_window_s, cart_max (distinct items; the oldest-added go first)
--       history_term (the event's 2^((ts - epoch) / half_life), indexing.history),
--       history_max (items), history_epoch, history_half_life_s (to start the history
--       of a shopper from their recent list)
-- Returns {status, category}: status 0 duplicate, 1 applied, 2 applied earlier by this
-- same delivery but its global side effects (log, trending) were not confirmed: the
-- caller redoes them. A copy of the event in another message, racing the first, is a
-- duplicate: only the delivery that applied an event finishes it.
local profile, recent, cart, cart_added, purchased, purchase_counts, affinity, seen, pending =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local purchase_first, interests = KEYS[10], KEYS[11]
local interest_window, cart_max = tonumber(ARGV[16]), tonumber(ARGV[17])
local event_id, etype, item = ARGV[1], ARGV[2], ARGV[3]
local ts, qty = tonumber(ARGV[4]), tonumber(ARGV[5])
local price, category, affinity_inc = ARGV[6], ARGV[7], tonumber(ARGV[8])
local state_keys = 13
if #KEYS > state_keys then
  local facts = redis.call('HMGET', KEYS[state_keys + 1], 'category', 'price')
  category = facts[1] or ''
  if price == '' and tonumber(facts[2]) then price = facts[2] end
end
local now, recent_max = tonumber(ARGV[9]), tonumber(ARGV[10])
local window, dedup_max, ttl = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13])
local history, history_sums, history_max = KEYS[12], KEYS[13], tonumber(ARGV[19])

-- The shopper's accumulated item history (indexing/history.py, whose ItemHistory is this
-- in Python): `history` holds each item's latest ts, `history_sums` its
-- "<type> <count> <decayed sum>" per event type, numbers as %.17g (exact doubles).
-- Returns 1 when the item is new to the history (it then starts from zero).
local function history_add(h_item, h_type, h_ts, h_term)
  local added = redis.call('ZADD', history, 'GT', h_ts, h_item)
  local row = false
  if added == 0 then row = redis.call('HGET', history_sums, h_item) end
  local out, found = {}, false
  if row then
    for t, c, d in string.gmatch(row, '(%S+) (%S+) (%S+)') do
      if t == h_type then
        c = string.format('%d', tonumber(c) + 1)
        d = string.format('%.17g', tonumber(d) + h_term)
        found = true
      end
      out[#out + 1] = t .. ' ' .. c .. ' ' .. d
    end
  end
  if not found then out[#out + 1] = h_type .. ' 1 ' .. string.format('%.17g', h_term) end
  redis.call('HSET', history_sums, h_item, table.concat(out, ' '))
  return added
end

-- Drop the `over` lowest-scored members of `zset` (then the lowest ids) and their fields
-- of `hash`, in chunks: unpack() fails beyond a few thousand values, and a cart filled
-- before its cap existed may be that large.
local function drop_oldest(zset, hash, over)
  while over > 0 do
    local oldest = redis.call('ZRANGE', zset, 0, math.min(over, 1000) - 1)
    if #oldest == 0 then break end
    redis.call('ZREM', zset, unpack(oldest))
    redis.call('HDEL', hash, unpack(oldest))
    over = over - #oldest
  end
end

if redis.call('ZSCORE', seen, event_id) then
  if redis.call('HGET', pending, event_id) == ARGV[15] then return {2, category} end
  return {0, ''}
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
if item ~= '' then
  local count = redis.call('ZCARD', history)
  if count == 0 then
    -- No history yet: a new shopper, or one from before it was kept. Start it from the
    -- recent events kept (before this one), oldest first.
    local epoch, half_life = tonumber(ARGV[20]), tonumber(ARGV[21])
    local kept = redis.call('LRANGE', recent, 0, -1)
    for i = #kept, 1, -1 do
      local ok, old = pcall(cjson.decode, kept[i])
      if ok and type(old) == 'table' and type(old.item_id) == 'string'
        and old.item_id ~= '' and type(old.type) == 'string' and tonumber(old.ts) then
        local old_ts = tonumber(old.ts)
        count = count + history_add(
          old.item_id, old.type, old_ts, 2 ^ ((old_ts - epoch) / half_life))
        if count > history_max then
          drop_oldest(history, history_sums, count - history_max)
          count = history_max
        end
      end
    end
  end
  count = count + history_add(item, etype, ARGV[4], tonumber(ARGV[18]))
  if count > history_max then drop_oldest(history, history_sums, count - history_max) end
end
local entry = ARGV[14]
if category ~= '' then  -- the entry's last field, as the worker's JSON would put it
  entry = string.sub(entry, 1, -2) .. ',"category":' .. cjson.encode(category) .. '}'
end
redis.call('LPUSH', recent, entry)
redis.call('LTRIM', recent, 0, recent_max - 1)

if (etype == 'view' or etype == 'add_to_cart') and item ~= '' then
  redis.call('ZADD', interests, 'GT', ts, item)
  redis.call('ZREMRANGEBYSCORE', interests, '-inf', '(' .. (now - interest_window))
end
if etype == 'add_to_cart' then
  redis.call('HINCRBY', cart, item, qty)
  redis.call('ZADD', cart_added, 'GT', ts, item)
  drop_oldest(cart_added, cart, redis.call('ZCARD', cart_added) - cart_max)
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
for i = 1, state_keys do redis.call('EXPIRE', KEYS[i], ttl) end
return {1, category}
