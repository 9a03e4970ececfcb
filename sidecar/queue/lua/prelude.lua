-- Shared helpers, prepended to every script after the generated header
-- (scripts.py: constants shared with Python, REST, REPLY_FIELDS).
-- Every script receives the queue's keys in the order of keys.QueueKeys.all():
local K_TICKETS, K_SERVING, K_WAITING, K_INVITED, K_ACTIVE, K_RATE, K_SETTINGS, K_ENDED,
  K_REVOKED, K_MISSED, K_RECALL, K_LIVE, K_LINE_VERSION, K_LINE_LOG, K_OPENING, K_ORDER, K_RANK,
  K_EPOCH, K_RECOVERY, K_HISTORY, K_SNAPSHOT, K_TALLY, K_MINUTES, K_CODES, K_CODE_LABELS =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10],
  KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15], KEYS[16], KEYS[17], KEYS[18], KEYS[19],
  KEYS[20], KEYS[21], KEYS[22], KEYS[23], KEYS[24], KEYS[25]

-- Redis' clock, so every replica agrees on time.
local clock = redis.call('TIME')
local now_sec = tonumber(clock[1])
local now_ms = now_sec * 1000 + math.floor(tonumber(clock[2]) / 1000)

local UNLIMITED = 1e15

-- How the sale went (history.lua closes each minute into a record): counts of this
-- minute in the tally, "<minute>.<what>".
local function tally(what, n)
  if n ~= 0 then redis.call('HINCRBY', K_TALLY, math.floor(now_sec / 60) .. '.' .. what, n) end
end

-- The bucket (1-based) of `value` among ascending upper `bounds`; #bounds + 1 past them.
local function bucket_of(value, bounds)
  for i, bound in ipairs(bounds) do
    if value <= bound then return i end
  end
  return #bounds + 1
end

-- The line summary (keys.QueueKeys.line_version): blocks whose count this call
-- changed, and whether it moved serving, published once when it answers.
local changed_blocks, line_moved = {}, false

local function line_publish()
  local list = {}
  for block in pairs(changed_blocks) do list[#list + 1] = block end
  if #list == 0 and not line_moved then return end
  -- one version per changed block: a reader cut short mid-way resumes exactly
  local v = redis.call('INCRBY', K_LINE_VERSION, math.max(#list, 1)) - #list
  for i = 1, #list, 1000 do
    local args = {}
    for j = i, math.min(i + 999, #list) do
      args[#args + 1] = v + j
      args[#args + 1] = list[j]
    end
    redis.call('ZADD', K_LINE_LOG, unpack(args))
  end
  changed_blocks, line_moved = {}, false
end

-- The script's answer, fields by name laid out in the order scripts.py declares
-- (REPLY_FIELDS): a field missing or unknown is an error, never a shifted reply.
-- The line summary's changes are published with it.
local function reply(fields)
  local out, n = {}, 0
  for i, name in ipairs(REPLY_FIELDS) do
    local v = fields[name]
    if v == nil then return redis.error_reply('reply field missing: ' .. name) end
    out[i] = v
  end
  for name in pairs(fields) do
    n = n + 1
    if n > #REPLY_FIELDS then return redis.error_reply('unknown reply field: ' .. name) end
  end
  line_publish()
  return out
end

-- The queue's epoch, made the first time it is touched: Redis' clock in
-- microseconds, so a queue lost in a restart without persistence gets a new
-- one and places handed out before it are recognised as gone.
-- known_*: what the calling replica last saw of the queue ('' = nothing). A new
-- epoch where a replica knew another means Redis lost the queue: the line is
-- rebuilt from the tokens (recovery). Tickets go on after every place from before
-- (plus a slack for those handed out since that replica's last look), so
-- newcomers queue behind them; for recovery_ms the line stands still, so admitted
-- cookies coming back are counted first (heartbeat.lua) and waiters' polls put
-- their old tickets back in line (claim.lua).
local function queue_epoch(known_epoch, known_tickets, known_serving, recovery_ms)
  local epoch = redis.call('GET', K_EPOCH)
  if not epoch then
    epoch = clock[1] .. string.format('%06d', tonumber(clock[2]))
    redis.call('SET', K_EPOCH, epoch)
    if known_epoch and known_epoch ~= '' then
      local serving = tonumber(known_serving) or 0
      local last = (tonumber(known_tickets) or 0) + RECOVERY_TICKET_SLACK
      last = math.max(last, tonumber(redis.call('GET', K_TICKETS) or '0'))
      redis.call('SET', K_TICKETS, last)
      redis.call('SET', K_SERVING, serving)
      redis.call('DEL', K_RECOVERY)
      redis.call('HSET', K_RECOVERY, 'from', known_epoch, 'first', serving + 1, 'last', last,
        'until', now_ms + (tonumber(recovery_ms) or 0))
      redis.call('EXPIRE', K_RECOVERY, PLACE_TTL)
    end
  end
  return epoch
end

-- Within the recovery window after Redis lost the queue: nobody new is admitted.
local function recovering()
  return (tonumber(redis.call('HGET', K_RECOVERY, 'until')) or 0) > now_ms
end

-- A scheduled opening (unix seconds, 0 = none): the operator's override in the
-- settings hash wins over the configured time, as for every setting.
local function effective_opens_at(configured)
  local v = tonumber(redis.call('HGET', K_SETTINGS, 'opens_at'))
  if v and v >= 0 and v <= OPENS_AT_MAX then return math.floor(v) end
  return tonumber(configured) or 0
end

local function is_closed(opens_at)
  return opens_at > 0 and now_sec < opens_at
end

-- Line order. The pre-queue of the last opening (tickets first..last) was put in a
-- shuffled order (opening.lua); every other ticket's line number is the ticket itself.
-- `serving`, `live` and the front window count line numbers; the other sets hold
-- tickets. The order and rank strings hold 4 bytes per place. While an opening
-- is being written (opening.moved present), tickets first..first+moved-1 have
-- their drawn place and the others still stand at their ticket.
local shuffled
local function shuffled_range()
  if not shuffled then
    local r = redis.call('HMGET', K_OPENING, 'first', 'last', 'moved')
    local first, last = tonumber(r[1]) or 0, tonumber(r[2]) or -1
    shuffled = {first, last, r[3] and first + tonumber(r[3]) - 1 or last}
  end
  return shuffled[1], shuffled[2], shuffled[3]
end

local function opening_in_progress()
  local first, last, placed = shuffled_range()
  return placed < last
end

local function line_of(t)
  t = tonumber(t)
  local first, _, placed = shuffled_range()
  if t < first or t > placed then return t end
  local i = 4 * (t - first)
  return first + struct.unpack('>I4', redis.call('GETRANGE', K_RANK, i, i + 3))
end

-- The tickets at line numbers lo..hi, in line order (one read of the order string).
-- Not during an opening (nobody is invited then, and no front is reported).
local function tickets_at(lo, hi)
  local first, last = shuffled_range()
  local out = {}
  local a, b = math.max(lo, first), math.min(hi, last)
  local packed = ''
  if a <= b then packed = redis.call('GETRANGE', K_ORDER, 4 * (a - first), 4 * (b - first) + 3) end
  for n = lo, hi do
    if n < a or n > b then
      out[#out + 1] = n
    else
      out[#out + 1] = first + struct.unpack('>I4', packed, 4 * (n - a) + 1)
    end
  end
  return out
end

-- People in line per block of line numbers (live positions): +n or -n for line number l.
local function count_in_line(l, n)
  local block = math.floor(tonumber(l) / LIVE_BLOCK)
  if redis.call('HINCRBY', K_LIVE, block, n) <= 0 then redis.call('HDEL', K_LIVE, block) end
  changed_blocks[block] = true
end

-- Takes tickets out of the line in bulk (scores lo..hi), keeping the block counts:
-- at most `limit` of them; returns how many went.
local function leave_line_by_score(lo, hi, limit)
  local gone = redis.call('ZRANGEBYSCORE', K_WAITING, lo, hi, 'LIMIT', 0, limit)
  if #gone == 0 then return 0 end
  local per_block = {}
  for _, t in ipairs(gone) do
    local block = math.floor(line_of(t) / LIVE_BLOCK)
    per_block[block] = (per_block[block] or 0) + 1
  end
  for block, n in pairs(per_block) do count_in_line(block * LIVE_BLOCK, -n) end
  for i = 1, #gone, 1000 do
    redis.call('ZREM', K_WAITING, unpack(gone, i, math.min(i + 999, #gone)))
  end
  return #gone
end
-- A used second chance keeps its entry in `missed`, shifted below zero, until a
-- re-invitation it led to can no longer lapse: a ticket gets one second chance.
local USED = 1e13

-- Drops lapsed invitations; a lapsed invitation leaves a second chance of one
-- grace period (NX: never a second one). Idle sessions are ended by the tick
-- (end_idle_sessions), which publishes them; until then they count as taken.
local function purge(grace_ms)
  local lapsed = redis.call('ZRANGEBYSCORE', K_INVITED, '-inf', '(' .. now_ms)
  if #lapsed > 0 then
    redis.call('ZREMRANGEBYSCORE', K_INVITED, '-inf', '(' .. now_ms)
    for _, t in ipairs(lapsed) do
      redis.call('ZADD', K_MISSED, 'NX', now_ms + grace_ms, t)
    end
  end
  redis.call('ZREMRANGEBYSCORE', K_MISSED, 0, now_ms)
  redis.call('ZREMRANGEBYSCORE', K_MISSED, '-inf', now_ms - USED)
  return #lapsed
end

-- Ends sessions that went unused past their expiry (never confirmed, or idle),
-- with a little slack so a heartbeat still in a replica's batch finds its
-- member. They are published like a leave: a cookie kept aside (or copied)
-- cannot come back later, on any replica, to take a slot that went to someone else.
local function end_idle_sessions(slack_ms, ttl_sec)
  local idle = redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', '(' .. (now_ms - slack_ms))
  if #idle == 0 then return 0 end
  redis.call('ZREMRANGEBYSCORE', K_ACTIVE, '-inf', '(' .. (now_ms - slack_ms))
  local until_sec = now_sec + ttl_sec  -- a cookie outlives its slot by less than this
  for _, sid in ipairs(idle) do
    redis.call('ZADD', K_REVOKED, until_sec, sid)
    redis.call('XADD', K_ENDED, 'MAXLEN', '~', ENDED_STREAM_MAXLEN, '*', 'sid', sid, 'until', until_sec)
  end
  return #idle
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

-- A new session must be confirmed (its cookie presented again) within
-- confirm_ms; a heartbeat then extends it to the session TTL. A client that
-- drops the cookie holds its slot no longer than that.
local function admit(sid, confirm_ms)
  redis.call('ZADD', K_ACTIVE, now_ms + confirm_ms, sid)
  record_admissions(1)
end

-- Uses a ticket's second chance if it has one (its turn passed within one
-- grace period): returns true once, then never again for that ticket.
local function second_chance(ticket, grace_ms)
  local ends = tonumber(redis.call('ZSCORE', K_MISSED, ticket))
  if not ends or ends <= now_ms then return false end
  redis.call('ZADD', K_MISSED, ends + 2 * grace_ms - USED, ticket)
  return true
end
