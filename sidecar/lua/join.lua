-- Takes the next ticket. A newcomer with nobody ahead and free capacity is
-- admitted at once; everyone else waits in line.
-- ARGV: sid, mode, capacity, admit_per_minute, session_ttl_ms, purge_slack_ms
-- Returns {admitted (0/1), ticket}
local sid, mode = ARGV[1], ARGV[2]
local capacity, per_minute = tonumber(ARGV[3]), tonumber(ARGV[4])
local ttl_ms, slack_ms = tonumber(ARGV[5]), tonumber(ARGV[6])

purge(slack_ms)
local ticket = redis.call('INCR', K_TICKETS)
local serving = tonumber(redis.call('GET', K_SERVING) or '0')
if mode == 'on' and serving == ticket - 1 and free_slots(capacity, per_minute) > 0 then
  redis.call('SET', K_SERVING, ticket)
  admit(sid, ttl_ms)
  return {1, ticket}
end
redis.call('ZADD', K_WAITING, now_ms, ticket)
return {0, ticket}
