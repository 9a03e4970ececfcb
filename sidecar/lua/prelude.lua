-- Shared helpers, prepended to every script (engine.py does the joining).
-- Every script receives the queue's keys in the order of keys.QueueKeys.all():
local K_TICKETS, K_SERVING, K_WAITING, K_INVITED, K_ACTIVE, K_RATE, K_SETTINGS, K_ENDED, K_REVOKED =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]

-- Redis' clock, so every replica agrees on time.
local clock = redis.call('TIME')
local now_sec = tonumber(clock[1])
local now_ms = now_sec * 1000 + math.floor(tonumber(clock[2]) / 1000)

local UNLIMITED = 1e15

-- Drops idle sessions and lapsed invitations. Sessions get a little slack so a
-- heartbeat still in a replica's batch finds its member.
local function purge(slack_ms)
  local expired = redis.call('ZREMRANGEBYSCORE', K_ACTIVE, '-inf', '(' .. (now_ms - slack_ms))
  local lapsed = redis.call('ZREMRANGEBYSCORE', K_INVITED, '-inf', '(' .. now_ms)
  return expired, lapsed
end

-- Admissions in the rolling minute and in the current second; prunes old buckets.
local function admitted_recently()
  local minute, second = 0, 0
  local buckets = redis.call('HGETALL', K_RATE)
  for i = 1, #buckets, 2 do
    local sec = tonumber(buckets[i])
    if sec <= now_sec - 60 then
      redis.call('HDEL', K_RATE, buckets[i])
    else
      local n = tonumber(buckets[i + 1])
      minute = minute + n
      if sec == now_sec then second = n end
    end
  end
  return minute, second
end

-- How many more visitors both capacity policies let in right now. The
-- per-minute policy is also spread over the minute (ceil(M/60) a second) so a
-- whole minute's admissions do not land in its first second.
local function free_slots(capacity, per_minute)
  local free = UNLIMITED
  if capacity > 0 then
    free = capacity - redis.call('ZCARD', K_ACTIVE) - redis.call('ZCARD', K_INVITED)
  end
  if per_minute > 0 then
    local minute, second = admitted_recently()
    free = math.min(free, per_minute - minute, math.ceil(per_minute / 60) - second)
  end
  return math.max(free, 0)
end

local function record_admissions(n)
  redis.call('HINCRBY', K_RATE, now_sec, n)
  redis.call('EXPIRE', K_RATE, 120)
end

local function admit(sid, ttl_ms)
  redis.call('ZADD', K_ACTIVE, now_ms + ttl_ms, sid)
  record_admissions(1)
end
