-- Ends the queue's admitted sessions now (an operator closing it with
-- end_sessions): at most `limit` a call, each published like a leave, so every
-- replica refuses its cookie within a refresh and no slot is held.
-- Arguments and reply: scripts.END_SESSIONS. revoke_until: unix seconds a cookie
-- of them could still be valid. done: 1 when none is left.
local revoke_until = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local sids = redis.call('ZRANGE', K_ACTIVE, 0, limit - 1)
for _, sid in ipairs(sids) do
  redis.call('ZADD', K_REVOKED, revoke_until, sid)
  redis.call('XADD', K_ENDED, 'MAXLEN', '~', ENDED_STREAM_MAXLEN, '*', 'sid', sid, 'until', revoke_until)
end
if #sids > 0 then redis.call('ZREM', K_ACTIVE, unpack(sids)) end
return reply{ended = #sids, done = redis.call('ZCARD', K_ACTIVE) == 0 and 1 or 0}
