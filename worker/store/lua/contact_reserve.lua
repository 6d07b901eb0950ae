-- Check a shopper's contact limits and, unless dry, record one contact: atomic, so two
-- workers sending at once can never both slip under a cap.
-- KEYS: sent zset ("<purpose>:<rule>:<message_id>" -> time), rule_last hash (rule -> time)
-- ARGV: now, purpose, rule, message_id, cap_marketing_day, cap_marketing_week,
--       cap_total_day, cooldown_s, ttl_s, dry ('1' = check only)
-- Returns 'ok', 'already' (this message was recorded before), or the limit hit:
-- 'cooldown', 'cap_day', 'cap_week', 'cap_total'.
local sent, rule_last = KEYS[1], KEYS[2]
local now, purpose, rule, message_id = tonumber(ARGV[1]), ARGV[2], ARGV[3], ARGV[4]
local cap_day, cap_week, cap_total = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local cooldown, ttl, dry = tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10] == '1'
local member = purpose .. ':' .. rule .. ':' .. message_id

if redis.call('ZSCORE', sent, member) then return 'already' end
redis.call('ZREMRANGEBYSCORE', sent, '-inf', now - 7 * 86400)
local last = tonumber(redis.call('HGET', rule_last, rule) or '-1')
if last >= 0 and now - last < cooldown then return 'cooldown' end

local day, week, total = 0, 0, 0
local entries = redis.call('ZRANGEBYSCORE', sent, now - 7 * 86400, '+inf', 'WITHSCORES')
for i = 1, #entries, 2 do
  local is_marketing = string.sub(entries[i], 1, 10) == 'marketing:'
  local ts = tonumber(entries[i + 1])
  if ts > now - 86400 then
    total = total + 1
    if is_marketing then day = day + 1 end
  end
  if is_marketing then week = week + 1 end
end
if purpose == 'marketing' then
  if day >= cap_day then return 'cap_day' end
  if week >= cap_week then return 'cap_week' end
end
if total >= cap_total then return 'cap_total' end
if dry then return 'ok' end
redis.call('ZADD', sent, now, member)
redis.call('HSET', rule_last, rule, now)
redis.call('EXPIRE', sent, ttl)
redis.call('EXPIRE', rule_last, ttl)
return 'ok'
