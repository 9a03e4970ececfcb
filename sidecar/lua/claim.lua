-- Turns an invitation into an active session. Idempotent for a session that
-- is already active (two tabs, a retried request).
-- ARGV: ticket, sid, mode, capacity, admit_per_minute, session_ttl_ms, purge_slack_ms
-- Returns {1} admitted, {0} not invited yet, {-1} turn missed and no room now
local ticket, sid, mode = ARGV[1], ARGV[2], ARGV[3]
local capacity, per_minute = tonumber(ARGV[4]), tonumber(ARGV[5])
local ttl_ms, slack_ms = tonumber(ARGV[6]), tonumber(ARGV[7])

purge(slack_ms)
if redis.call('ZSCORE', K_ACTIVE, sid) then
  redis.call('ZADD', K_ACTIVE, 'GT', now_ms + ttl_ms, sid)
  return {1}
end
if redis.call('ZREM', K_INVITED, ticket) == 1 then
  -- the slot was reserved (and counted against the rate) when invited
  redis.call('ZADD', K_ACTIVE, now_ms + ttl_ms, sid)
  return {1}
end
if tonumber(ticket) > tonumber(redis.call('GET', K_SERVING) or '0') then
  return {0}
end
-- The turn came while the visitor was away (invitation lapsed or skipped).
-- They were ahead of everyone still waiting, so free room is theirs.
redis.call('ZREM', K_WAITING, ticket)
if (mode == 'on' or mode == 'queue-all') and free_slots(capacity, per_minute) > 0 then
  admit(sid, ttl_ms)
  return {1}
end
return {-1}
