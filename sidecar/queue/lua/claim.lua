-- Turns an invitation into an active session. Idempotent for a session that
-- is already active (two tabs, a retried request). A ticket admits at most
-- once: a turn that passed gives one second chance within one grace period,
-- ahead of the line; after that the visitor joins at the back.
-- A place from another epoch (Redis lost the queue since) comes back once, with
-- its old ticket, if it belongs to the lost epoch the recovery rebuilds and the
-- line has not passed it yet (its holder is the session the first one back had:
-- a second tab, never a copy with another session); otherwise it is no place.
-- ('' trusts the ticket: tests.)
-- Arguments and reply: scripts.CLAIM. result: 1 admitted, 0 not yet (waiting or
-- recalled), -1 turn missed: join again, -2 place from before a restart: join again,
-- 2 put back in line in the current epoch (current_epoch: the token's new epoch)
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
local joined_ms = tonumber(ARGV[11])

-- What admits follows the operator's overrides stored in Redis, not the caller's
-- copy: a replica that has not seen a change yet (queue-all, a lower capacity,
-- closing) never admits what the change forbids.
local s = effective_settings{mode = mode, capacity = capacity,
  admit_per_minute = admit_per_minute, joins_per_address = tonumber(joins_per_address),
  closes_at = 0}
if s.closes_at > 0 and now_sec >= s.closes_at then s.mode = 'closed' end
mode, capacity, admit_per_minute = s.mode, s.capacity, s.admit_per_minute

local function answer(result, current_epoch)
  return reply{result = result, current_epoch = current_epoch, waited_ms = -1, estimate = -1}
end

-- A first admission: its time in line and the estimate it was given at join
-- (what the tally had for that minute, or its record) count in the minute's tally.
local function admitted(current)
  if joined_ms <= 0 then return answer(1, current) end
  local waited = math.max(0, now_ms - joined_ms)
  tally('w' .. bucket_of(waited / 1000, WAIT_BOUNDS), 1)
  local m = math.floor(joined_ms / 60000)
  local told = tonumber(redis.call('HGET', K_TALLY, m .. '.eta'))
  if not told then
    local record = redis.call('HGET', K_MINUTES, m)
    -- its eighth field
    told = record and tonumber(string.match(record, '^' .. string.rep('[^,]*,', 7) .. '([-%d]+)'))
  end
  if told and told > 0 then
    tally('e' .. bucket_of(waited / told, ESTIMATE_BOUNDS), 1)  -- ms / s: per mille
  else
    told = -1
  end
  return reply{result = 1, current_epoch = current, waited_ms = waited, estimate = told}
end

local current = redis.call('GET', K_EPOCH)
if epoch ~= '' and current ~= epoch then
  if not current then
    return answer(0, '')  -- Redis is back but nobody ticked yet
  end
  local r = redis.call('HMGET', K_RECOVERY, 'from', 'first', 'last')
  local t = tonumber(ticket)
  if r[1] ~= epoch or t < tonumber(r[2]) or t > tonumber(r[3]) then
    return answer(-2, current)
  end
  local holder = redis.call('HGET', K_RECOVERY, 't' .. ticket)
  if holder == sid then
    return answer(2, current)  -- already back (another tab)
  end
  if holder or t <= tonumber(redis.call('GET', K_SERVING) or '0') then
    return answer(-2, current)  -- taken back, or passed
  end
  redis.call('HSET', K_RECOVERY, 't' .. ticket, sid)
  redis.call('ZADD', K_WAITING, now_ms, ticket)  -- seen: it just asked
  count_in_line(ticket, 1)
  return answer(2, current)
end
current = current or ''

purge(grace_ms)
if redis.call('ZSCORE', K_ACTIVE, sid) then  -- already in: counted the first time
  return answer(1, current)
end
if redis.call('ZREM', K_INVITED, ticket) == 1 then
  -- the slot was reserved (and counted against the rate) when invited
  redis.call('ZADD', K_ACTIVE, now_ms + confirm_ms, sid)
  return admitted(current)
end
-- its turn comes when the line reaches its line number (shuffled after an opening),
-- or when it is drawn (random order): either way it has left the waiting set
if line_of(ticket) > tonumber(redis.call('GET', K_SERVING) or '0')
    and redis.call('ZSCORE', K_WAITING, ticket) then
  return answer(0, current)
end
if redis.call('ZSCORE', K_RECALL, ticket) then
  return answer(0, current)
end
if second_chance(ticket, grace_ms) then
  -- nobody is admitted before a scheduled opening, nor while its order is written
  local open = (mode == 'on' or mode == 'queue-all') and not is_closed(effective_opens_at(opens_at))
    and not opening_in_progress()
  if open and free_slots(capacity, admit_per_minute) > redis.call('ZCARD', K_RECALL) then
    admit(sid, confirm_ms)
    return admitted(current)
  end
  -- no room now: first in line for the next free slot (tick.lua)
  redis.call('ZADD', K_RECALL, ticket, ticket)
  return answer(0, current)
end
return answer(-1, current)
