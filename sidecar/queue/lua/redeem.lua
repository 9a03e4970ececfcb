-- Redeems an access code: a place served before the line, once across every
-- replica (the code leaves the set in this atomic call). The holder is admitted
-- at once when a newcomer would be (mode on, room beyond the second chances);
-- otherwise the place joins the recall list, invited at the next free slot before
-- anyone in line, and kept there as long as a place in line lives (PLACE_TTL).
-- The place the holder had in line (old_ticket of old_epoch, 0 = none) leaves it.
-- Arguments and reply: scripts.REDEEM. result: 0 no such code (unknown, used or
-- expired), 1 admitted, 2 next in (recalled); label: the code's label.
local digest = ARGV[1]
local sid = ARGV[2]
local old_ticket = tonumber(ARGV[3])
local old_epoch = ARGV[4]
local mode = ARGV[5]
local capacity = tonumber(ARGV[6])
local admit_per_minute = tonumber(ARGV[7])
local confirm_ms = tonumber(ARGV[8])
local grace_ms = tonumber(ARGV[9])
local opens_at = ARGV[10]
local joins_per_address = ARGV[11]  -- part of the admission policy; a code is not a join
local known_epoch = ARGV[12]
local known_tickets = ARGV[13]
local known_serving = ARGV[14]
local recovery_ms = ARGV[15]

local expires = tonumber(redis.call('ZSCORE', K_CODES, digest))
if not expires or expires <= now_sec then
  return reply{result = 0, ticket = 0, epoch = '', label = ''}
end
local label = redis.call('HGET', K_CODE_LABELS, digest) or ''
redis.call('ZREM', K_CODES, digest)
redis.call('HDEL', K_CODE_LABELS, digest)

local epoch = queue_epoch(known_epoch, known_tickets, known_serving, recovery_ms)
purge(grace_ms)
if old_ticket > 0 and old_epoch == epoch then
  if redis.call('ZREM', K_WAITING, old_ticket) == 1 then count_in_line(line_of(old_ticket), -1) end
  redis.call('ZREM', K_RECALL, old_ticket)
end
local ticket = redis.call('INCR', K_TICKETS)
local serving = tonumber(redis.call('GET', K_SERVING) or '0')
local open = mode == 'on' and not is_closed(effective_opens_at(opens_at))
  and not opening_in_progress() and not recovering()
if open and free_slots(capacity, admit_per_minute) > redis.call('ZCARD', K_RECALL) then
  admit(sid, confirm_ms)
  if serving == ticket - 1 then
    redis.call('SET', K_SERVING, ticket)  -- nobody was ahead: the line stays contiguous
    line_moved = true
  end
  return reply{result = 1, ticket = ticket, epoch = epoch, label = label}
end
-- a second chance already used (shifted below zero, see prelude.lua second_chance),
-- valid as long as the place: advance.lua invites it first, claim.lua admits it
redis.call('ZADD', K_MISSED, now_ms + PLACE_TTL * 1000 + grace_ms - USED, ticket)
redis.call('ZADD', K_RECALL, ticket, ticket)
return reply{result = 2, ticket = ticket, epoch = epoch, label = label}
