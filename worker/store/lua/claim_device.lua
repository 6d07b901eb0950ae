-- Claim the send of one message to one device, atomically, so two deliveries of the
-- same message never both send.
-- KEYS: message state hash   ARGV: field (dev:<device_id>), owner (task id), now, lease_s
-- A settled device (sent, invalid, failed) is never claimed again. A device being sent
-- by another owner is left alone until its lease runs out (that worker died); the same
-- owner (a redelivery of its task) may claim again. Returns 1 if claimed, else 0.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current == 'sent' or current == 'invalid' or current == 'failed' then return 0 end
if current then
  local owner, since = string.match(current, '^sending:(.*)|([^|]*)$')
  if owner and owner ~= ARGV[2] and tonumber(since) > tonumber(ARGV[3]) - tonumber(ARGV[4]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], 'sending:' .. ARGV[2] .. '|' .. ARGV[3])
return 1
