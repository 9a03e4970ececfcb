-- Applies one replica's batch of "still here" signals. A session that made a
-- request with a valid cookie is extended (GT: never shortened). One that
-- Redis no longer counts and that was not ended (Redis lost it: a restart
-- without persistence) comes back only where a newcomer would be let in at once
-- (mode on, nobody in line or recalled, room); otherwise it ends like a leave,
-- so every replica refuses the cookie and the visitor joins the line again:
-- capacity and the line's order hold.
-- ARGV: session_ttl_ms, capacity, ended maxlen, mode, number of session ids,
--       session ids..., waiting tickets...
-- Returns {sessions counted, sessions ended}
local ttl_ms, capacity, maxlen, mode, n =
  tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local counted, ended = 0, 0
local until_sec = now_sec + math.ceil(ttl_ms / 1000)
local open = mode == 'on' and redis.call('ZCARD', K_WAITING) == 0
  and redis.call('ZCARD', K_RECALL) == 0
for i = 6, 5 + n do
  local sid = ARGV[i]
  if not redis.call('ZSCORE', K_REVOKED, sid) then
    if redis.call('ZSCORE', K_ACTIVE, sid) then
      redis.call('ZADD', K_ACTIVE, 'GT', now_ms + ttl_ms, sid)
      counted = counted + 1
    elseif open and (capacity == 0
        or redis.call('ZCARD', K_ACTIVE) + redis.call('ZCARD', K_INVITED) < capacity) then
      redis.call('ZADD', K_ACTIVE, now_ms + ttl_ms, sid)
      counted = counted + 1
    else
      redis.call('ZADD', K_REVOKED, until_sec, sid)
      redis.call('XADD', K_ENDED, 'MAXLEN', '~', maxlen, '*', 'sid', sid, 'until', until_sec)
      ended = ended + 1
    end
  end
end
-- XX: a waiter who left or was invited is not put back in line
for i = 6 + n, #ARGV do
  redis.call('ZADD', K_WAITING, 'XX', 'GT', now_ms, ARGV[i])
end
return {counted, ended}
