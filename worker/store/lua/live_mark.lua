-- Mark catalog items under one new sequence number, for the processes that follow them to
-- catch up on: those serving the index (category, brand or sold-out state changed,
-- live_items.py) and every catalog cache (any upsert, shoppers/catalog.py).
-- KEYS: the sequence counter, the marks zset (one slot). ARGV: item ids.
-- Returns the sequence number.
local seq = redis.call('INCR', KEYS[1])
for _, item in ipairs(ARGV) do redis.call('ZADD', KEYS[2], seq, item) end
return seq
