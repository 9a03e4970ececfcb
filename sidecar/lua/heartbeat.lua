-- Applies one replica's batch of "still here" signals. A session that made a
-- request with a valid cookie is in use, so it is (re)counted even if Redis
-- lost or purged it, unless it ended (left, revoked). GT: never shortens one.
-- ARGV: session_ttl_ms, number of session ids, session ids..., waiting tickets...
local ttl_ms, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local counted = 0
for i = 3, 2 + n do
  if not redis.call('ZSCORE', K_REVOKED, ARGV[i]) then
    redis.call('ZADD', K_ACTIVE, 'GT', now_ms + ttl_ms, ARGV[i])
    counted = counted + 1
  end
end
-- XX: a waiter who left or was invited is not put back in line
for i = 3 + n, #ARGV do
  redis.call('ZADD', K_WAITING, 'XX', 'GT', now_ms, ARGV[i])
end
return counted
