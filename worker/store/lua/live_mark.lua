-- Mark catalog items whose served state changed (category, brand, sold out) under one new
-- sequence number, for the processes serving the index to catch up on (live_items.py).
-- KEYS: the sequence counter, the marks zset (one slot: {live}). ARGV: item ids.
-- Returns the sequence number.
local seq = redis.call('INCR', KEYS[1])
for _, item in ipairs(ARGV) do redis.call('ZADD', KEYS[2], seq, item) end
return seq
