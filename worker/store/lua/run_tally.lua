-- A campaign run's outcomes in one shard, each shopper counted once (a chunk fired again
-- after a crash finds its shoppers counted already).
-- KEYS: done (hash user -> outcome), counts (hash outcome -> shoppers)
-- ARGV: ttl, then triplets user, outcome, coupon (1 if the message carries one)
local added = 0
for i = 2, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('HINCRBY', KEYS[2], ARGV[i + 1], 1)
    if ARGV[i + 2] == '1' then redis.call('HINCRBY', KEYS[2], 'coupons', 1) end
    added = added + 1
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return added
