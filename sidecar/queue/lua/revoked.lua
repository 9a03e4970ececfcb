-- Revocations still in force, a chunk at a time, for a replica reloading them
-- (revocations.lua): those after session `after` in the set's order ('' = from
-- the start). A cursor that expired meanwhile restarts at the first in force:
-- everything before it expired too. Arguments and reply: scripts.REVOKED.
-- revoked = {sid, until, ...}; done = 1 when this was the last chunk.
local after = ARGV[1]
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', K_REVOKED, '-inf', '(' .. now_sec)
local start = 0
if after ~= '' then start = (redis.call('ZRANK', K_REVOKED, after) or -1) + 1 end
local found = redis.call('ZRANGE', K_REVOKED, start, start + limit - 1, 'WITHSCORES')
return reply{revoked = found, done = #found < 2 * limit and 1 or 0}
