-- Takes the next tickets for a batch of newcomers, in arrival order. While
-- nobody is ahead and there is free capacity, each is admitted at once; the
-- rest wait in line, counted as present for a first-poll window only.
-- ARGV: mode, capacity, admit_per_minute, confirm_ms, purge_slack_ms, grace_ms,
--       first_poll_window_ms, sids...
-- Returns {ticket, admitted (0/1), ticket, admitted, ..., epoch}
local mode = ARGV[1]
local capacity, per_minute = tonumber(ARGV[2]), tonumber(ARGV[3])
local confirm_ms, slack_ms, grace_ms = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

purge(slack_ms, grace_ms)
local epoch = queue_epoch()
local n = #ARGV - 7
local first = redis.call('INCRBY', K_TICKETS, n) - n + 1
local serving = tonumber(redis.call('GET', K_SERVING) or '0')
local free = 0
if mode == 'on' and serving == first - 1 then
  -- people recalled for a second chance come before newcomers
  free = free_slots(capacity, per_minute) - redis.call('ZCARD', K_RECALL)
end
local out = {}
for i = 1, n do
  local ticket, sid = first + i - 1, ARGV[7 + i]
  if free > 0 then
    free = free - 1
    serving = ticket
    admit(sid, confirm_ms)
    out[#out + 1] = ticket
    out[#out + 1] = 1
  else
    free = 0
    -- negative: joined at this time and not seen since (see tick.lua)
    redis.call('ZADD', K_WAITING, -now_ms, ticket)
    count_in_line(ticket, 1)
    out[#out + 1] = ticket
    out[#out + 1] = 0
  end
end
if serving >= first then redis.call('SET', K_SERVING, serving) end
out[#out + 1] = epoch
return out
