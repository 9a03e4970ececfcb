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

-- How the sale went: the tally of each minute that ended (joins, waits, people who
-- gave up: tally() in prelude.lua, from join, claim, leave and the tick) becomes
-- its record in K_MINUTES, with the line and the active sessions as the minute
-- ended and the estimate a newcomer was given in it. Record (history.Minute):
-- "joins,admitted,line,active,left,pruned,skipped,estimate;w=i:n,...;e=k:n,..."
-- (waits and estimate accuracy: bucket i of WAIT_BOUNDS / ESTIMATE_BOUNDS: count).
-- Runs once a minute per queue; a minute with nothing to tell writes nothing.
local function sparse(f, prefix, buckets)
  local out, total = {}, 0
  for i = 1, buckets do
    local n = tonumber(f[prefix .. i]) or 0
    if n > 0 then
      out[#out + 1] = i .. ':' .. n
      total = total + n
    end
  end
  return table.concat(out, ','), total
end

local function write_minute(m, f, line, active)
  local waits, admitted = sparse(f, 'w', #WAIT_BOUNDS + 1)
  local accuracy = sparse(f, 'e', #ESTIMATE_BOUNDS + 1)
  local j, l, p, s = tonumber(f.j) or 0, tonumber(f.l) or 0, tonumber(f.p) or 0,
    tonumber(f.s) or 0
  if j + admitted + line + active + l + p + s == 0 then return false end
  local head = table.concat({j, admitted, line, active, l, p, s, tonumber(f.eta) or -1}, ',')
  -- the first write wins: a late count never replaces a minute already told
  redis.call('HSETNX', K_MINUTES, m, head .. ';' .. waits .. ';' .. accuracy)
  return true
end

-- Records older than MINUTES_KEPT go: the one that just left the window at each
-- close, and once an hour (or when the hash outgrew the window) a sweep of all.
local function trim_minutes(m)
  local oldest = m - MINUTES_KEPT
  if m % 60 == 0 or redis.call('HLEN', K_MINUTES) > MINUTES_KEPT then
    local stale = {}
    for _, at in ipairs(redis.call('HKEYS', K_MINUTES)) do
      if (tonumber(at) or 0) <= oldest then stale[#stale + 1] = at end
    end
    for i = 1, #stale, 1000 do
      redis.call('HDEL', K_MINUTES, unpack(stale, i, math.min(i + 999, #stale)))
    end
  else
    redis.call('HDEL', K_MINUTES, oldest)
  end
  redis.call('EXPIRE', K_MINUTES, MINUTES_KEPT * 60 + 3600)
end

local function record_minutes(line, active, eta)
  local now_min = math.floor(now_sec / 60)
  if eta > 0 then redis.call('HSET', K_TALLY, now_min .. '.eta', eta) end
  local closed = tonumber(redis.call('HGET', K_TALLY, 'closed'))
  if closed and closed >= now_min - 1 then return end
  local raw = redis.call('HGETALL', K_TALLY)
  local per, done = {}, {}
  for i = 1, #raw, 2 do
    local m, what = string.match(raw[i], '^(%d+)%.(%w+)$')
    m = tonumber(m)
    if m and m < now_min then
      per[m] = per[m] or {}
      per[m][what] = raw[i + 1]
      done[#done + 1] = raw[i]
    end
  end
  -- the minute that just ended tells the line even when nothing else happened
  if line + active > 0 then per[now_min - 1] = per[now_min - 1] or {} end
  local wrote = false
  for m, f in pairs(per) do
    wrote = write_minute(m, f, line, active) or wrote
  end
  if #raw == 0 and not wrote then return end  -- an idle queue: no key, nothing kept
  for i = 1, #done, 1000 do
    redis.call('HDEL', K_TALLY, unpack(done, i, math.min(i + 999, #done)))
  end
  redis.call('HSET', K_TALLY, 'closed', now_min - 1)
  redis.call('EXPIRE', K_TALLY, MINUTES_KEPT * 60)
  if wrote then trim_minutes(now_min - 1) end
end
