-- Upsert one catalog item; keep price and stock changes with the time they happened.
-- KEYS: item hash, changes list                      (both in the item's hash slot)
-- ARGV: ts, changes_max, field1, value1, field2, value2, ...
-- Returns {status, changes_json}: status 0 = older than the stored version (ignored),
-- 1 = applied; changes_json lists {field, old, new, ts} for price and stock.
local item, changes = KEYS[1], KEYS[2]
local ts, changes_max = tonumber(ARGV[1]), tonumber(ARGV[2])
local stored = tonumber(redis.call('HGET', item, 'updated_at') or '-1')
if ts < stored then return {0, '[]'} end

local changed = {}
for i = 3, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  if field == 'price' or field == 'stock' then
    local old = redis.call('HGET', item, field)
    if old and tonumber(old) ~= tonumber(value) then
      local change = {field = field, old = tonumber(old), new = tonumber(value), ts = ts}
      table.insert(changed, change)
      redis.call('LPUSH', changes, cjson.encode(change))
    end
  end
  redis.call('HSET', item, field, value)
end
redis.call('HSET', item, 'updated_at', ts)
if #changed > 0 then
  redis.call('LTRIM', changes, 0, changes_max - 1)
  return {1, cjson.encode(changed)}
end
return {1, '[]'}
