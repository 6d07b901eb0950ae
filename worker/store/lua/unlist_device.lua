-- Take a device off a shopper's list, returning the record taken (false if none), so
-- the caller can put it back if the shopper turns out to own the device after all.
-- KEYS: devices hash   ARGV: device_id
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then redis.call('HDEL', KEYS[1], ARGV[1]) end
return raw
