-- Delete a device's owner key if the shopper still holds it (compare and delete in one
-- step: a registration by another shopper in between keeps its claim).
-- KEYS: device owner key   ARGV: user_id   Returns 1 if deleted, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
