-- Mark a device inactive unless it was registered again after the gateway's verdict.
-- KEYS: devices hash   ARGV: device_id, invalid_since ('' = unknown), reason
-- Returns 1 if deactivated, 0 if absent or re-registered since.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local record = cjson.decode(raw)
if ARGV[2] ~= '' and tonumber(record.registered_at) > tonumber(ARGV[2]) then return 0 end
record.active = false
record.deactivated_reason = ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(record))
return 1
