-- Part: the advance. Moves serving by the free capacity: second chances first
-- (they were ahead of everyone still in line), then the line, passing at most
-- ADVANCE_MAX_STEPS places per call (the rest at the next tick). In random order
-- (s.order = 'random') the line is a draw instead (draw below).
-- Returns serving, invited, skipped, capped, unseen (skipped while in line, never
-- seen: they keep a second chance).

-- Random order. Present waiters (seen within abandon_after: a positive score at
-- least the threshold) are the top ranks of the waiting set, so a uniform rank
-- among them is a uniform present waiter: ZRANGE by rank, O(log N) at any size.
-- Never-seen newcomers (negative scores) and waiters gone quiet (older scores)
-- are not in the draw; the tick prunes them as in FIFO order.
local function present_threshold(s)
  return now_ms - s.abandon_after * 1000
end

local function in_draw(s)
  return redis.call('ZCOUNT', K_WAITING, present_threshold(s), '+inf')
end

-- A uniform number in 0..n-1: 52 bits of SHA-1 over the caller's random number and
-- the draw's index (bias at most n / 2^52), so nobody can tell who is drawn next.
local function draw_index(seed, i, n)
  return tonumber(string.sub(redis.sha1hex(seed .. ':' .. i), 1, 13), 16) % n
end

-- Invites up to `free` present waiters drawn at random, then moves serving over
-- the places at the front that left the line (drawn, left or pruned), so serving
-- still means "nobody before it is in line" (join.lua, claim.lua, FIFO again).
local function draw(s, grace_ms, serving, tickets, free)
  local invited = 0
  local below = redis.call('ZCOUNT', K_WAITING, '-inf', '(' .. present_threshold(s))
  local n = redis.call('ZCARD', K_WAITING) - below
  while free > 0 and n > 0 and invited < DRAW_MAX do
    local rank = below + draw_index(s.draw_seed, invited, n)
    local t = redis.call('ZRANGE', K_WAITING, rank, rank)[1]
    redis.call('ZREM', K_WAITING, t)
    count_in_line(line_of(t), -1)
    redis.call('ZADD', K_INVITED, now_ms + grace_ms, t)
    free, n, invited = free - 1, n - 1, invited + 1
  end
  local steps = 0
  while serving < tickets and steps < ADVANCE_MAX_STEPS do
    if redis.call('ZSCORE', K_WAITING, tickets_at(serving + 1, serving + 1)[1]) then break end
    serving, steps = serving + 1, steps + 1
  end
  return serving, invited, steps, steps == ADVANCE_MAX_STEPS or invited == DRAW_MAX
end

-- `slack_ms`: a waiter who joined less than this ago and is not seen yet may have
-- polled already, the mark still in a replica's heartbeat batch: the line waits
-- for them (a tick or two) rather than skip them and let a newcomer in first.
local function advance(s, grace_ms, serving, tickets, slack_ms)
  local invited, skipped, unseen = 0, 0, 0
  local free = free_slots(s.capacity, s.admit_per_minute)
  while free > 0 do
    local r = redis.call('ZRANGE', K_RECALL, 0, 0)
    if #r == 0 then break end
    redis.call('ZREM', K_RECALL, r[1])
    -- still within the window (see second_chance in prelude.lua)
    local used = tonumber(redis.call('ZSCORE', K_MISSED, r[1]))
    if used and used < 0 and used + USED - grace_ms > now_ms then
      redis.call('ZADD', K_INVITED, now_ms + grace_ms, r[1])
      free = free - 1
      invited = invited + 1
    end
  end
  local steps, start = 0, serving
  local capped = false
  if s.order == 'random' then
    local drawn
    serving, drawn, steps, capped = draw(s, grace_ms, serving, tickets, free)
    invited, skipped, free = invited + drawn, steps, 0
  end
  -- serving is a line number; the ticket at it may differ after a shuffle
  while free > 0 and serving < tickets and steps < ADVANCE_MAX_STEPS do
    local t = tickets_at(serving + 1, serving + 1)[1]
    local seen = tonumber(redis.call('ZSCORE', K_WAITING, t))
    if seen and seen < 0 and -seen > now_ms - slack_ms then break end
    serving = serving + 1
    steps = steps + 1
    if seen then
      redis.call('ZREM', K_WAITING, t)
      count_in_line(serving, -1)
      if seen > 0 then
        redis.call('ZADD', K_INVITED, now_ms + grace_ms, t)
        free = free - 1
        invited = invited + 1
      else
        -- joined moments ago, not polled yet: a bot, or a visitor still loading
        -- the page; the visitor's first poll uses the second chance
        redis.call('ZADD', K_MISSED, 'NX', now_ms + grace_ms, t)
        skipped = skipped + 1
        unseen = unseen + 1
      end
    else
      -- left the line or stopped polling: skipped without using capacity
      skipped = skipped + 1
    end
  end
  if steps > 0 then
    redis.call('SET', K_SERVING, serving)
    line_moved = true
    -- blocks behind serving never change again: their log entries go
    local passed = {}
    for block = math.floor(start / LIVE_BLOCK), math.floor(serving / LIVE_BLOCK) - 1 do
      passed[#passed + 1] = block
    end
    if #passed > 0 then redis.call('ZREM', K_LINE_LOG, unpack(passed)) end
  end
  if invited > 0 then record_admissions(invited) end
  return serving, invited, skipped, capped or steps == ADVANCE_MAX_STEPS, unseen
end
