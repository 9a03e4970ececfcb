-- Turns an invitation into an active session. Idempotent for a session that
-- is already active (two tabs, a retried request). A ticket admits at most
-- once: a turn that passed gives one second chance within one grace period,
-- ahead of the line; after that the visitor joins at the back.
-- A place from another epoch (Redis lost the queue since) is no place: its
-- number may belong to someone else now ('' trusts the ticket: tests).
-- ARGV: ticket, sid, epoch, mode, capacity, admit_per_minute, confirm_ms, grace_ms,
--       opens_at, joins_per_address (unused here)
-- Returns {1} admitted, {0} not yet (waiting or recalled), {-1} turn missed: join again,
--         {-2} place from before a restart: join again
local ticket, sid = ARGV[1], ARGV[2]
if ARGV[3] ~= '' and redis.call('GET', K_EPOCH) ~= ARGV[3] then
  return {-2}
end
local mode = ARGV[4]
local capacity, per_minute = tonumber(ARGV[5]), tonumber(ARGV[6])
local confirm_ms, grace_ms = tonumber(ARGV[7]), tonumber(ARGV[8])

purge(grace_ms)
if redis.call('ZSCORE', K_ACTIVE, sid) then
  return {1}
end
if redis.call('ZREM', K_INVITED, ticket) == 1 then
  -- the slot was reserved (and counted against the rate) when invited
  redis.call('ZADD', K_ACTIVE, now_ms + confirm_ms, sid)
  return {1}
end
-- its turn comes when the line reaches its line number (shuffled after an opening)
if line_of(ticket) > tonumber(redis.call('GET', K_SERVING) or '0') then
  return {0}
end
if redis.call('ZSCORE', K_RECALL, ticket) then
  return {0}
end
if second_chance(ticket, grace_ms) then
  -- nobody is admitted before a scheduled opening
  local open = (mode == 'on' or mode == 'queue-all') and not is_closed(effective_opens_at(ARGV[9]))
  if open and free_slots(capacity, per_minute) > redis.call('ZCARD', K_RECALL) then
    admit(sid, confirm_ms)
    return {1}
  end
  -- no room now: first in line for the next free slot (tick.lua)
  redis.call('ZADD', K_RECALL, ticket, ticket)
  return {0}
end
return {-1}
