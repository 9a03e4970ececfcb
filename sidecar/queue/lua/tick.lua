-- The refresher's call, run by every replica a few times a second: purge,
-- advance the line by the free capacity, and report the queue's state.
-- Idempotent and leaderless: two replicas running it together invite each
-- waiter once, because the script is atomic and reads the stored counters.
-- Arguments and reply: scripts.TICK (the configured settings, then the
-- replica's purge slack, the last ended-stream id it read, and what it last saw
-- of the queue: prelude.lua queue_epoch).
local capacity = tonumber(ARGV[1])
local admit_per_minute = tonumber(ARGV[2])
local session_ttl = tonumber(ARGV[3])
local grace = tonumber(ARGV[4])
local abandon_after = tonumber(ARGV[5])
local mode = ARGV[6]
local session_max = tonumber(ARGV[7])
local opens_at = ARGV[8]
local joins_per_address = tonumber(ARGV[9])
local shared_sessions = ARGV[10]
local max_addresses = tonumber(ARGV[11])
local purge_slack_ms = tonumber(ARGV[12])
local last_ended = ARGV[13]
local known_epoch = ARGV[14]
local known_tickets = ARGV[15]
local known_serving = ARGV[16]
local recovery_ms = ARGV[17]

local s = {
  capacity = capacity, admit_per_minute = admit_per_minute, session_ttl = session_ttl,
  grace = grace, abandon_after = abandon_after, mode = mode, session_max = session_max,
  joins_per_address = joins_per_address, shared_sessions = shared_sessions,
  max_addresses = max_addresses,
}
-- operator overrides stored in Redis win over the replica's configuration;
-- a value the configuration would refuse (a typo, out of range) is ignored
local overrides = redis.call('HGETALL', K_SETTINGS)
for i = 1, #overrides, 2 do
  local name, value = overrides[i], overrides[i + 1]
  if name == 'mode' then
    if MODES[value] then s.mode = value end
  elseif name == 'shared_sessions' then
    if SHARED_SESSIONS[value] then s.shared_sessions = value end
  elseif OVERRIDE_LEAST[name] ~= nil then
    local n = tonumber(value)
    if n and n >= OVERRIDE_LEAST[name] and n <= 1e9 then s[name] = math.floor(n) end
  end
end
local grace_ms = s.grace * 1000
s.opens_at = effective_opens_at(opens_at)
local closed = is_closed(s.opens_at)
local epoch = queue_epoch(known_epoch, known_tickets, known_serving, recovery_ms)

local lapsed = purge(grace_ms)
local expired = end_idle_sessions(purge_slack_ms, s.session_ttl)
redis.call('ZREMRANGEBYSCORE', K_REVOKED, '-inf', '(' .. now_sec)
-- Waiters who stopped polling leave the line here, in two calls whatever their
-- number: seen too long ago (positive scores), or never seen since joining
-- longer ago than the first-poll window (negative scores, see join.lua).
leave_line_by_score(0, '(' .. (now_ms - s.abandon_after * 1000))
leave_line_by_score('(' .. -(now_ms - FIRST_POLL_WINDOW_MS), '(0')

-- L'Ecuyer's combined generator (CACM 1988): exact in doubles, so engine.py
-- replays the same order from the logged seed (engine.shuffled_order).
local function shuffled_order(seed, count)
  local s1 = seed % 2147483562 + 1
  local s2 = math.floor(seed / 2147483562) % 2147483398 + 1
  local a = {}
  for i = 1, count do a[i] = i - 1 end
  for i = count, 2, -1 do  -- Fisher-Yates
    s1 = (40014 * s1) % 2147483563
    s2 = (40692 * s2) % 2147483399
    local j = math.floor((s1 - s2) % 2147483562 / 2147483562 * i) + 1
    a[i], a[j] = a[j], a[i]
  end
  return a
end

-- The opening: the first call after it (this script, atomic, so exactly one
-- replica) puts the pre-queue in a uniformly random order, once. Everyone who
-- joins later has a higher ticket and queues FIFO behind it.
local opened = 0
local pending = redis.call('HMGET', K_OPENING, 'from', 'to')
if not closed and pending[1] then
  local first, last = tonumber(pending[1]), tonumber(pending[2])
  local count = last - first + 1
  local h = redis.call('TIME')
  local seed = tonumber(string.sub(redis.sha1hex(K_OPENING .. h[1] .. '.' .. h[2] .. '.' .. count),
    1, 13), 16)
  local a = shuffled_order(seed, count)
  local rank = {}
  for i = 1, count do rank[i] = 0 end  -- filled in order first: Lua keeps it an array
  for i = 1, count do rank[a[i] + 1] = i - 1 end
  -- 4 bytes per place, packed 256 at a time (one struct.pack call each)
  local function packed(values)
    local out = {}
    for i = 1, count, 256 do
      local k = math.min(256, count - i + 1)
      out[#out + 1] = struct.pack('>' .. string.rep('I4', k), unpack(values, i, i + k - 1))
    end
    return table.concat(out)
  end
  redis.call('SET', K_ORDER, packed(a))
  redis.call('SET', K_RANK, packed(rank))
  -- the live counts of who is still in line move from ticket to line number
  local delta = {}
  for _, t in ipairs(redis.call('ZRANGE', K_WAITING, 0, -1)) do
    t = tonumber(t)
    if t >= first and t <= last then
      local from_block = math.floor(t / LIVE_BLOCK)
      local to_block = math.floor((first + rank[t - first + 1]) / LIVE_BLOCK)
      delta[from_block] = (delta[from_block] or 0) - 1
      delta[to_block] = (delta[to_block] or 0) + 1
    end
  end
  for block, d in pairs(delta) do
    if d ~= 0 then count_in_line(block * LIVE_BLOCK, d) end
  end
  redis.call('HDEL', K_OPENING, 'from', 'to')
  -- %d: a 52-bit seed would lose digits in Lua's default number format
  redis.call('HSET', K_OPENING, 'first', first, 'last', last, 'seed', string.format('%d', seed),
    'at', now_ms)
  shuffled = {first, last}
  opened = 1
end

local tickets = tonumber(redis.call('GET', K_TICKETS) or '0')
local serving = tonumber(redis.call('GET', K_SERVING) or '0')
local invited, skipped = 0, 0
-- nobody is invited before a scheduled opening, whatever the free capacity, nor
-- while a lost line is being rebuilt (recovering: the line stands still)
if (s.mode == 'on' or s.mode == 'queue-all') and not closed and not recovering() then
  local free = free_slots(s.capacity, s.admit_per_minute)
  -- second chances first: they were ahead of everyone still in line
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
  local steps, max_steps = 0, ADVANCE_MAX_STEPS
  -- serving is a line number; the ticket at it may differ after a shuffle
  while free > 0 and serving < tickets and steps < max_steps do
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
      end
    else
      -- left the line or stopped polling: skipped without using capacity
      skipped = skipped + 1
    end
  end
  if steps > 0 then redis.call('SET', K_SERVING, serving) end
  if invited > 0 then record_admissions(invited) end
end
local minute = admitted_recently()

-- Live positions (see keys.FRONT_WINDOW): who is still in line among the next
-- tickets, as a string of 0/1, up to a block boundary; beyond, counts per block.
local front = ''
local window_end = math.min(tickets,
  (math.floor((serving + FRONT_WINDOW) / LIVE_BLOCK) + 1) * LIVE_BLOCK - 1)
if window_end > serving then
  local members = tickets_at(serving + 1, window_end)
  local bits = {}
  for i, score in ipairs(redis.call('ZMSCORE', K_WAITING, unpack(members))) do
    bits[i] = score and '1' or '0'
  end
  front = table.concat(bits)
end
local blocks = {}
if tickets > window_end then blocks = redis.call('HGETALL', K_LIVE) end

-- Ended sessions since the replica's last read. A new replica, or one that fell
-- behind the capped stream, gets every revocation still in force instead.
local ended, last = {}, last_ended
local function id_lt(a, b)
  local a1, a2 = string.match(a, '^(%d+)-(%d+)$')
  local b1, b2 = string.match(b, '^(%d+)-(%d+)$')
  a1, a2, b1, b2 = tonumber(a1), tonumber(a2), tonumber(b1), tonumber(b2)
  return a1 < b1 or (a1 == b1 and a2 < b2)
end
if redis.call('EXISTS', K_ENDED) == 1 then
  local info = redis.call('XINFO', 'STREAM', K_ENDED)
  local fields = {}
  for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
  local newest, oldest = fields['last-generated-id'], fields['recorded-first-entry-id']
  -- some entries were trimmed, and maybe some this replica had not read yet
  local behind = tonumber(fields['entries-added']) > tonumber(fields['length'])
    and id_lt(last, oldest)
  if last == '0-0' or behind then
    local all = redis.call('ZRANGEBYSCORE', K_REVOKED, now_sec, '+inf', 'WITHSCORES', 'LIMIT', 0,
      REVOKED_RELOAD_MAX)
    for i = 1, #all, 2 do
      table.insert(ended, newest)
      table.insert(ended, all[i])
      table.insert(ended, all[i + 1])
    end
    if #all == 0 then
      -- nothing in force: only move the reader to the end of the stream
      table.insert(ended, newest)
      table.insert(ended, '')
      table.insert(ended, 0)
    end
  else
    for _, entry in ipairs(redis.call('XRANGE', K_ENDED, '(' .. last, '+', 'COUNT', 1000)) do
      local f = entry[2]
      table.insert(ended, entry[1])
      table.insert(ended, f[2])
      table.insert(ended, f[4])
    end
  end
end

local sh_first, sh_last = shuffled_range()
return reply{
  tickets = tickets, serving = serving, waiting = redis.call('ZCARD', K_WAITING),
  active = redis.call('ZCARD', K_ACTIVE), invited = redis.call('ZCARD', K_INVITED),
  admitted_last_minute = minute, redis_time_ms = now_ms,
  mode = s.mode, capacity = s.capacity, admit_per_minute = s.admit_per_minute,
  session_ttl = s.session_ttl, grace = s.grace, abandon_after = s.abandon_after,
  session_max = s.session_max, opens_at = s.opens_at, joins_per_address = s.joins_per_address,
  shared_sessions = s.shared_sessions, max_addresses = s.max_addresses,
  expired = expired, lapsed = lapsed, newly_invited = invited, skipped = skipped, ended = ended,
  recalled = redis.call('ZCARD', K_RECALL), front = front, blocks = blocks,
  closed = closed and 1 or 0, opened = opened,
  shuffled_first = sh_first, shuffled_last = sh_last,
  seed = redis.call('HGET', K_OPENING, 'seed') or 0, epoch = epoch,
}
