-- Acknowledge a claimed job once its task is enqueued. If the job was rescheduled while
-- in flight (same id, new payload), keep the new one.
-- KEYS: due zset, inflight zset, jobs hash      ARGV: job_id, payload as claimed
local due, inflight, jobs = KEYS[1], KEYS[2], KEYS[3]
redis.call('ZREM', inflight, ARGV[1])
if not redis.call('ZSCORE', due, ARGV[1]) and redis.call('HGET', jobs, ARGV[1]) == ARGV[2] then
  redis.call('HDEL', jobs, ARGV[1])
end
return 1
