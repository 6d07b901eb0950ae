-- Set contact preferences field by field; a field older than what is stored is ignored,
-- so a late-arriving grant never overrides a newer withdrawal.
-- KEYS: prefs hash
-- ARGV: ts, ttl_s, field1, value1, field2, value2, ...   (value '' deletes the field)
-- Each field `f` keeps its time in `f@ts`. Returns the number of fields changed.
local prefs = KEYS[1]
local ts = tonumber(ARGV[1])
local changed = 0
for i = 3, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  local stamp = field .. '@ts'
  local stored = tonumber(redis.call('HGET', prefs, stamp) or '-1')
  if ts >= stored then
    if value == '' then
      redis.call('HDEL', prefs, field)
    else
      redis.call('HSET', prefs, field, value)
    end
    redis.call('HSET', prefs, stamp, ts)
    changed = changed + 1
  end
end
redis.call('EXPIRE', prefs, tonumber(ARGV[2]))
return changed
