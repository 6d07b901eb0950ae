-- Claim due delayed jobs atomically: two pollers never get the same job.
-- KEYS: due zset (job_id -> due time), inflight zset (job_id -> lease expiry), jobs hash
-- ARGV: now, limit, lease_s
-- Jobs whose lease ran out (their poller died before acking) are due again first.
-- Returns a flat list: job_id1, payload1, job_id2, payload2, ...
local due, inflight, jobs = KEYS[1], KEYS[2], KEYS[3]
local now, limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', inflight, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', inflight, id)
  redis.call('ZADD', due, 'NX', now, id)
end
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', due, id)
  local payload = redis.call('HGET', jobs, id)
  if payload then
    redis.call('ZADD', inflight, now + lease, id)
    table.insert(out, id)
    table.insert(out, payload)
  end
end
return out
