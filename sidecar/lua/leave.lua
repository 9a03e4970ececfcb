-- Ends a visitor's place, whatever its state, and frees its slot at once. The
-- session id is published so every replica refuses its cookie from now on.
-- ARGV: ticket, sid, revoke_until (unix seconds the cookie could still be valid), maxlen
-- Returns 1 if an active session or invitation was freed
local ticket, sid = ARGV[1], ARGV[2]
local freed = redis.call('ZREM', K_ACTIVE, sid) + redis.call('ZREM', K_INVITED, ticket)
redis.call('ZREM', K_WAITING, ticket)
redis.call('ZADD', K_REVOKED, ARGV[3], sid)
redis.call('XADD', K_ENDED, 'MAXLEN', '~', ARGV[4], '*', 'sid', sid, 'until', ARGV[3])
return math.min(freed, 1)
