-- Take a device off a shopper's list after the push worker found it owned by another
-- shopper, unless the shopper registered it again since it was read (the registration
-- made it theirs again).
-- KEYS: devices hash   ARGV: device_id, registered_at as read
-- Returns 1 if removed, 0 if absent or registered again.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
if tonumber(cjson.decode(raw).registered_at) ~= tonumber(ARGV[2]) then return 0 end
return redis.call('HDEL', KEYS[1], ARGV[1])
