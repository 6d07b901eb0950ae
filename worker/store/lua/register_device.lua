-- Register a device to a shopper, moving it away from whoever held it, in one step: two
-- registrations of one token racing each other leave it owned by one shopper and listed
-- under that shopper only.
-- KEYS: device owner key, the shopper's devices hash, the devices hash of the owner the
--       caller read (the shopper's own hash when there was none)
-- ARGV: user_id, owner the caller read ('' = none), device_id, record JSON, ttl_s
-- The previous owner's hash must be named in KEYS, so the caller reads the owner first;
-- if it changed since, nothing is written and the reply is {0, current owner} (the
-- caller tries again with it). Otherwise the reply is {1, previous owner or ''}.
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[2] then return {0, current} end
if current ~= '' and current ~= ARGV[1] then
  redis.call('HDEL', KEYS[3], ARGV[3])
end
local ttl = tonumber(ARGV[5])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[2], ttl)
return {1, current}
