-- Read the parts of one shopper that `ShopperReads` (shoppers/snapshot.py) asks for, in
-- one command: a pipeline of a dozen small reads costs the client about three times the
-- CPU of one call that returns the same replies. Reads only.
-- KEYS: one key per read, in order (all in the shopper's hash slot).
-- ARGV: per key, the read to make: 'hash' (HGETALL), 'json_list' (LRANGE all of a list
--       of JSON texts, returned as one JSON array text: one parse for the client instead
--       of one per entry), 'zset' (ZRANGE all WITHSCORES), 'zset_desc' (ZREVRANGE all
--       WITHSCORES), 'zset_since' followed by the minimum score (ZRANGEBYSCORE min +inf
--       WITHSCORES), 'fields' followed by a count n and n fields (HMGET).
-- Returns one reply per key, in order, as the commands return them (flat pairs), but
-- 'json_list' as one text.
local out, a = {}, 1
for i = 1, #KEYS do
  local key, op = KEYS[i], ARGV[a]
  a = a + 1
  if op == 'hash' then
    out[i] = redis.call('HGETALL', key)
  elseif op == 'json_list' then
    out[i] = '[' .. table.concat(redis.call('LRANGE', key, 0, -1), ',') .. ']'
  elseif op == 'zset' then
    out[i] = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  elseif op == 'zset_desc' then
    out[i] = redis.call('ZREVRANGE', key, 0, -1, 'WITHSCORES')
  elseif op == 'zset_since' then
    out[i] = redis.call('ZRANGEBYSCORE', key, ARGV[a], '+inf', 'WITHSCORES')
    a = a + 1
  elseif op == 'fields' then
    local n = tonumber(ARGV[a])
    local fields = {}
    for j = 1, n do fields[j] = ARGV[a + j] end
    -- HMGET's nil becomes false in Lua and nil again in the reply
    out[i] = redis.call('HMGET', key, unpack(fields))
    a = a + 1 + n
  else
    return redis.error_reply('read_shopper: unknown read ' .. tostring(op))
  end
end
return out
