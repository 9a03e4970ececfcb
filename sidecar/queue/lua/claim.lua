-- Turns an invitation into an active session. Idempotent for a session that
-- is already active (two tabs, a retried request). A ticket admits at most
-- once: a turn that passed gives one second chance within one grace period,
-- ahead of the line; after that the visitor joins at the back.
-- A place from another epoch (Redis lost the queue since) is no place: its
-- number may belong to someone else now ('' trusts the ticket: tests).
-- Arguments and reply: scripts.CLAIM. result: 1 admitted, 0 not yet (waiting or
-- recalled), -1 turn missed: join again, -2 place from before a restart: join again
local ticket = ARGV[1]
local sid = ARGV[2]
local epoch = ARGV[3]
local mode = ARGV[4]
local capacity = tonumber(ARGV[5])
local admit_per_minute = tonumber(ARGV[6])
local confirm_ms = tonumber(ARGV[7])
local grace_ms = tonumber(ARGV[8])
local opens_at = ARGV[9]
local joins_per_address = ARGV[10]  -- part of the admission policy; unused here

if epoch ~= '' and redis.call('GET', K_EPOCH) ~= epoch then
  return reply{result = -2}
end

purge(grace_ms)
if redis.call('ZSCORE', K_ACTIVE, sid) then
  return reply{result = 1}
end
if redis.call('ZREM', K_INVITED, ticket) == 1 then
  -- the slot was reserved (and counted against the rate) when invited
  redis.call('ZADD', K_ACTIVE, now_ms + confirm_ms, sid)
  return reply{result = 1}
end
-- its turn comes when the line reaches its line number (shuffled after an opening)
if line_of(ticket) > tonumber(redis.call('GET', K_SERVING) or '0') then
  return reply{result = 0}
end
if redis.call('ZSCORE', K_RECALL, ticket) then
  return reply{result = 0}
end
if second_chance(ticket, grace_ms) then
  -- nobody is admitted before a scheduled opening
  local open = (mode == 'on' or mode == 'queue-all') and not is_closed(effective_opens_at(opens_at))
  if open and free_slots(capacity, admit_per_minute) > redis.call('ZCARD', K_RECALL) then
    admit(sid, confirm_ms)
    return reply{result = 1}
  end
  -- no room now: first in line for the next free slot (tick.lua)
  redis.call('ZADD', K_RECALL, ticket, ticket)
  return reply{result = 0}
end
return reply{result = -1}
