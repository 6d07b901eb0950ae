-- Upsert one catalog item; keep price and stock changes with the time they happened.
-- KEYS: item hash, changes list                      (both in the item's hash slot)
-- ARGV: ts, changes_max, delivery, field1, value1, field2, value2, ...
-- Returns {status, changes_json, live}: status 0 = older than the stored version (ignored),
-- 1 = applied; changes_json lists {field, old, new, ts} for price and stock. A redelivered
-- upsert reports again the changes it recorded, so the caller redoes reactions a crash may
-- have cut short: one at the stored version's ts (an item sent with its `ts`) those
-- recorded at that ts; one that changes nothing those recorded by its `delivery` (the task
-- id; an item sent without `ts` takes the task's clock, which a retry does not repeat).
-- live = 1 when what the served index keeps of the item changed: its category or brand
-- (set for the first time, or changed) or whether it is sold out (stock crossing 0; a new
-- item's first stock of 0 too); a redelivery that carries any of those fields says 1
-- again, for the same reason.
local item, changes = KEYS[1], KEYS[2]
local ts, changes_max, delivery = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local stored = tonumber(redis.call('HGET', item, 'updated_at') or '-1')
if ts < stored then return {0, '[]', 0} end

-- the changes recorded before for which keep(change) holds, newest first
local function recorded_before(keep)
  local found = {}
  for _, raw in ipairs(redis.call('LRANGE', changes, 0, -1)) do
    local change = cjson.decode(raw)
    if keep(change) then table.insert(found, change) end
  end
  return found
end

local changed = {}
if ts == stored then
  changed = recorded_before(function(change) return change.ts == ARGV[1] end)
end
local recorded = false
local live = 0
for i = 4, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  local old = redis.call('HGET', item, field)
  if field == 'category' or field == 'brand' then
    if old ~= value or ts == stored then live = 1 end
  end
  if field == 'stock' then
    local was_out = old ~= false and tonumber(old) == 0
    if was_out ~= (tonumber(value) == 0) or ts == stored then live = 1 end
  end
  if field == 'price' or field == 'stock' then
    if old and tonumber(old) ~= tonumber(value) then
      -- ts kept as sent: cjson prints numbers with 14 digits, too few for epoch times
      local change = {field = field, old = tonumber(old), new = tonumber(value), ts = ARGV[1]}
      if delivery ~= '' then change.by = delivery end
      table.insert(changed, change)
      redis.call('LPUSH', changes, cjson.encode(change))
      recorded = true
    end
  end
  redis.call('HSET', item, field, value)
end
redis.call('HSET', item, 'updated_at', ts)
if recorded then
  redis.call('LTRIM', changes, 0, changes_max - 1)
elseif delivery ~= '' and #changed == 0 then
  changed = recorded_before(function(change) return change.by == delivery end)
end
if #changed == 0 then return {1, '[]', live} end
return {1, cjson.encode(changed), live}
