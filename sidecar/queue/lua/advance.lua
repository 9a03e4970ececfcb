-- Part: the advance. Moves serving by the free capacity: second chances first
-- (they were ahead of everyone still in line), then the line, passing at most
-- ADVANCE_MAX_STEPS places per call (the rest at the next tick).
-- Returns serving, invited, skipped, capped, unseen (skipped while in line, never
-- seen: they keep a second chance).
local function advance(s, grace_ms, serving, tickets)
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
  -- serving is a line number; the ticket at it may differ after a shuffle
  while free > 0 and serving < tickets and steps < ADVANCE_MAX_STEPS do
    serving = serving + 1
    steps = steps + 1
    local t = tickets_at(serving, serving)[1]
    local seen = tonumber(redis.call('ZSCORE', K_WAITING, t))
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
  return serving, invited, skipped, steps == ADVANCE_MAX_STEPS, unseen
end
