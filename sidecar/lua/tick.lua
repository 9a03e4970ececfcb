-- The refresher's call, run by every replica a few times a second: purge,
-- advance the line by the free capacity, and report the queue's state.
-- Idempotent and leaderless: two replicas running it together invite each
-- waiter once, because the script is atomic and reads the stored counters.
-- ARGV: capacity, admit_per_minute, session_ttl, grace, abandon_after, mode,
--       purge_slack_ms, last ended-stream id read, max advance steps
local s = {
  capacity = tonumber(ARGV[1]), admit_per_minute = tonumber(ARGV[2]),
  session_ttl = tonumber(ARGV[3]), grace = tonumber(ARGV[4]),
  abandon_after = tonumber(ARGV[5]), mode = ARGV[6],
}
-- operator overrides stored in Redis win over the replica's configuration
local overrides = redis.call('HGETALL', K_SETTINGS)
for i = 1, #overrides, 2 do
  local name, value = overrides[i], overrides[i + 1]
  if name == 'mode' then
    -- an unknown mode (a typo) is ignored rather than stopping the line
    if value == 'on' or value == 'queue-all' or value == 'paused' or value == 'off' then
      s.mode = value
    end
  elseif s[name] ~= nil then
    local n = tonumber(value)
    local least = (name == 'capacity' or name == 'admit_per_minute') and 0 or 1
    if n and n >= least then s[name] = math.floor(n) end
  end
end

local expired, lapsed = purge(tonumber(ARGV[7]))
redis.call('ZREMRANGEBYSCORE', K_REVOKED, '-inf', '(' .. now_sec)
local tickets = tonumber(redis.call('GET', K_TICKETS) or '0')
local serving = tonumber(redis.call('GET', K_SERVING) or '0')
local invited, skipped = 0, 0
if s.mode == 'on' or s.mode == 'queue-all' then
  local free = free_slots(s.capacity, s.admit_per_minute)
  local stale_before = now_ms - s.abandon_after * 1000
  local steps, max_steps = 0, tonumber(ARGV[9])
  while free > 0 and serving < tickets and steps < max_steps do
    serving = serving + 1
    steps = steps + 1
    local seen = redis.call('ZSCORE', K_WAITING, serving)
    if seen then redis.call('ZREM', K_WAITING, serving) end
    if seen and tonumber(seen) >= stale_before then
      redis.call('ZADD', K_INVITED, now_ms + s.grace * 1000, serving)
      free = free - 1
      invited = invited + 1
    else
      -- left the line or stopped polling: skipped without using capacity
      skipped = skipped + 1
    end
  end
  if steps > 0 then redis.call('SET', K_SERVING, serving) end
  if invited > 0 then record_admissions(invited) end
end
local minute = admitted_recently()

local ended = {}
for _, entry in ipairs(redis.call('XRANGE', K_ENDED, '(' .. ARGV[8], '+', 'COUNT', 1000)) do
  local f = entry[2]
  table.insert(ended, entry[1])
  table.insert(ended, f[2])
  table.insert(ended, f[4])
end

return {
  tickets, serving, redis.call('ZCARD', K_WAITING), redis.call('ZCARD', K_ACTIVE),
  redis.call('ZCARD', K_INVITED), minute, now_ms,
  s.mode, s.capacity, s.admit_per_minute, s.session_ttl, s.grace, s.abandon_after,
  expired, lapsed, invited, skipped, ended,
}
