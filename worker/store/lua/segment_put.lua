-- Write one shopper's activity entries in their shard of the segment indexes
-- (shoppers/segment_index.py), in one command instead of a dozen.
-- KEYS: seen, last_seen, last_purchase, orders, monetary, cart, categories, then one
--       affinity key per category (all in the shard's hash slot)
-- ARGV: user_id, now, then the scores of last_seen, last_purchase, orders, monetary and
--       cart ('' or 0: the shopper leaves that index), then per affinity key its
--       category and the shopper's share of it
local user = ARGV[1]
redis.call('ZADD', KEYS[1], ARGV[2], user)
for i = 2, 6 do
  local score = tonumber(ARGV[i + 1])
  if score and score ~= 0 then
    redis.call('ZADD', KEYS[i], score, user)
  else
    redis.call('ZREM', KEYS[i], user)
  end
end
for i = 8, #KEYS do
  local a = 8 + 2 * (i - 8)
  redis.call('SADD', KEYS[7], ARGV[a])
  redis.call('ZADD', KEYS[i], ARGV[a + 1], user)
end
return 1
