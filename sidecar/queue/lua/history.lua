-- The dashboard's history: one point per HISTORY_STEP bucket, written by the
-- queue's ticker (the first write of a bucket wins), trimmed here: the buckets
-- that just left the hour go with each new one, and a hash grown past an hour
-- of points (ticks that stopped for a while) is swept whole, once.
local HISTORY_POINTS = HISTORY_SECONDS / HISTORY_STEP

local function record_history(waiting, active, per_minute)
  local bucket = now_sec - now_sec % HISTORY_STEP
  local point = waiting .. ',' .. active .. ',' .. per_minute
  if redis.call('HSETNX', K_HISTORY, bucket, point) == 0 then return end
  redis.call('EXPIRE', K_HISTORY, HISTORY_SECONDS + 60)
  local oldest = bucket - HISTORY_SECONDS
  if redis.call('HLEN', K_HISTORY) > HISTORY_POINTS + 60 then
    local stale = {}
    for _, at in ipairs(redis.call('HKEYS', K_HISTORY)) do
      if tonumber(at) == nil or tonumber(at) < oldest then stale[#stale + 1] = at end
    end
    for i = 1, #stale, 1000 do
      redis.call('HDEL', K_HISTORY, unpack(stale, i, math.min(i + 999, #stale)))
    end
  else
    local gone = {}
    for at = oldest - 60 * HISTORY_STEP, oldest - HISTORY_STEP, HISTORY_STEP do
      gone[#gone + 1] = at
    end
    redis.call('HDEL', K_HISTORY, unpack(gone))
  end
end
