-- Read the parts of one shopper that `ShopperReads` (shoppers/snapshot.py) asks for, in
-- one command: a pipeline of a dozen small reads costs the client about three times the
-- CPU of one call that returns the same replies. Reads only.
-- KEYS: one key per read, in order (all in the shopper's hash slot), but two for
--       'history'.
-- ARGV: per read, the read to make: 'hash' (HGETALL), 'json_list' (LRANGE all of a list
--       of JSON texts, returned as one JSON array text: one parse for the client instead
--       of one per entry), 'zset' (ZRANGE all WITHSCORES), 'zset_desc' (ZREVRANGE all
--       WITHSCORES), 'zset_since' followed by the minimum score (ZRANGEBYSCORE min +inf
--       WITHSCORES), 'fields' followed by a count n and n fields (HMGET), 'history' (the
--       accumulated item history, indexing/history.py: its two keys, the zset item ->
--       latest ts and the hash item -> sums, read as one flat [item, ts, sums, ...], most
--       recently touched first; an item without sums is left out, as apply_event.lua
--       writes both).
-- Returns one reply per read, in order, as the commands return them (flat pairs), but
-- 'json_list' as one text and 'history' as triples.
local out, a, k = {}, 1, 1
while k <= #KEYS do
  local key, op = KEYS[k], ARGV[a]
  local reply
  a, k = a + 1, k + 1
  if op == 'hash' then
    reply = redis.call('HGETALL', key)
  elseif op == 'json_list' then
    reply = '[' .. table.concat(redis.call('LRANGE', key, 0, -1), ',') .. ']'
  elseif op == 'zset' then
    reply = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  elseif op == 'zset_desc' then
    reply = redis.call('ZREVRANGE', key, 0, -1, 'WITHSCORES')
  elseif op == 'zset_since' then
    reply = redis.call('ZRANGEBYSCORE', key, ARGV[a], '+inf', 'WITHSCORES')
    a = a + 1
  elseif op == 'fields' then
    local n = tonumber(ARGV[a])
    local fields = {}
    for j = 1, n do fields[j] = ARGV[a + j] end
    -- HMGET's nil becomes false in Lua and nil again in the reply
    reply = redis.call('HMGET', key, unpack(fields))
    a = a + 1 + n
  elseif op == 'history' then
    local sums_key = KEYS[k]
    k = k + 1
    local touched = redis.call('ZREVRANGE', key, 0, -1, 'WITHSCORES')
    reply = {}
    -- in chunks: unpack() fails beyond a few thousand values
    for first = 1, #touched, 2000 do
      local items = {}
      for j = first, math.min(first + 1999, #touched), 2 do items[#items + 1] = touched[j] end
      local sums = redis.call('HMGET', sums_key, unpack(items))
      for j = 1, #items do
        if sums[j] then
          reply[#reply + 1] = items[j]
          reply[#reply + 1] = touched[first + 2 * j - 1]
          reply[#reply + 1] = sums[j]
        end
      end
    end
  else
    return redis.error_reply('read_shopper: unknown read ' .. tostring(op))
  end
  out[#out + 1] = reply
end
return out
