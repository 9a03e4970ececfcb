-- Ends a visitor's place, whatever its state, and frees its slot at once. An
-- admitted session's id is published so every replica refuses its cookie from
-- now on; a place in line needs no revocation (its ticket can never admit once
-- it is gone from the line: claim.lua).
-- A ticket from another epoch (before a restart) names someone else's place now:
-- only the session id is used then.
-- Arguments and reply: scripts.LEAVE. revoke_until: unix seconds the cookie could
-- still be valid (0 = a place in line); epoch '' trusts the ticket (operators, tests).
-- freed: 1 if an active session or invitation was freed; left_line: 1 if a place in line
local ticket = ARGV[1]
local sid = ARGV[2]
local revoke_until = tonumber(ARGV[3])
local epoch = ARGV[4]
local freed, left_line = redis.call('ZREM', K_ACTIVE, sid), 0
if epoch == '' or redis.call('GET', K_EPOCH) == epoch then
  freed = freed + redis.call('ZREM', K_INVITED, ticket)
  if redis.call('ZREM', K_WAITING, ticket) == 1 then
    count_in_line(line_of(ticket), -1)
    left_line = 1
    tally('l', 1)  -- gave up their place (how the sale went)
  end
  redis.call('ZREM', K_MISSED, ticket)
  redis.call('ZREM', K_RECALL, ticket)
end
if revoke_until > now_sec then
  redis.call('ZADD', K_REVOKED, revoke_until, sid)
  redis.call('XADD', K_ENDED, 'MAXLEN', '~', ENDED_STREAM_MAXLEN, '*', 'sid', sid, 'until', revoke_until)
end
return reply{freed = math.min(freed, 1), left_line = left_line}
