-- Takes the next tickets for a batch of newcomers, in arrival order. While
-- nobody is ahead and there is free capacity, each is admitted at once; the
-- rest wait in line, counted as present for a first-poll window only.
-- Before a scheduled opening nobody is admitted: the tickets form the pre-queue
-- (opening.from..to) that the first tick after the opening shuffles.
-- The join budget (joins_per_address = N, when above 0): an address holding N
-- places in line, or past N joins this minute, gets no ticket.
-- Arguments and reply: scripts.JOIN. places = {ticket, admitted (0/1), ...}
-- in arrival order; ticket 0: refused (address over budget).
local mode = ARGV[1]
local capacity = tonumber(ARGV[2])
local admit_per_minute = tonumber(ARGV[3])
local confirm_ms = tonumber(ARGV[4])
local grace_ms = tonumber(ARGV[5])
local opens_at = ARGV[6]
local joins_per_address = tonumber(ARGV[7])
local known_epoch = ARGV[8]
local known_tickets = ARGV[9]
local known_serving = ARGV[10]
local recovery_ms = ARGV[11]

-- What admits follows the operator's overrides stored in Redis, not the caller's
-- copy: a replica that has not seen a change yet (queue-all, a lower capacity,
-- closing) never admits what the change forbids.
local s = effective_settings{mode = mode, capacity = capacity,
  admit_per_minute = admit_per_minute, joins_per_address = tonumber(joins_per_address),
  closes_at = 0}
if s.closes_at > 0 and now_sec >= s.closes_at then s.mode = 'closed' end
mode, capacity, admit_per_minute = s.mode, s.capacity, s.admit_per_minute
joins_per_address = s.joins_per_address
local closed = is_closed(effective_opens_at(opens_at))

-- Per-address keys: a counter per address and minute (the rate), and the set of
-- tickets the address holds (its places). Their names are built here from this
-- queue's key prefix (KEYS[1] is "aq:{tenant:queue}:tickets"), so they carry the
-- queue's hash tag and live in its Cluster slot, like the declared keys.
local base = string.sub(K_TICKETS, 1, -#'tickets' - 1)
local minute = math.floor(now_sec / 60)
local held = {}  -- address -> places it holds in line (this batch's accepted included)
local function places_held(addr)
  if held[addr] then return held[addr] end
  local key = base .. 'held:' .. addr
  local tickets = redis.call('SMEMBERS', key)
  local count = 0
  if #tickets > 0 then
    -- tickets no longer in line (admitted, left, skipped, dropped) leave the set
    local gone = {}
    for i, score in ipairs(redis.call('ZMSCORE', K_WAITING, unpack(tickets))) do
      if score then count = count + 1 else gone[#gone + 1] = tickets[i] end
    end
    if #gone > 0 then redis.call('SREM', key, unpack(gone)) end
  end
  held[addr] = count
  return count
end
local accepted, n = {}, 0
for i = REST, #ARGV, 2 do
  local addr, ok = ARGV[i + 1], true
  if joins_per_address > 0 and addr ~= '' then
    -- holdings first: a refused holder does not use up the minute's joins
    ok = places_held(addr) < joins_per_address
    if ok then
      local key = base .. 'addr:' .. addr .. ':' .. minute
      local used = redis.call('INCR', key)
      if used == 1 then redis.call('EXPIRE', key, ADDRESS_COUNTER_TTL) end
      ok = used <= joins_per_address
    end
    if ok then held[addr] = held[addr] + 1 end
  end
  accepted[#accepted + 1] = ok
  if ok then n = n + 1 end
end

purge(grace_ms)
local epoch = queue_epoch(known_epoch, known_tickets, known_serving, recovery_ms)
local out = {}
if n == 0 then
  for _ = 1, #accepted do
    out[#out + 1] = 0
    out[#out + 1] = 0
  end
  return reply{places = out, epoch = epoch}
end
local first = redis.call('INCRBY', K_TICKETS, n) - n + 1
local serving = tonumber(redis.call('GET', K_SERVING) or '0')
local free = 0
if closed then
  -- While people of the last drawn pre-queue still wait, its order stays: this
  -- closure's arrivals are not drawn again but queue in arrival order behind it.
  local _, last = shuffled_range()
  if serving >= last or redis.call('HEXISTS', K_OPENING, 'from') == 1 then
    redis.call('HSETNX', K_OPENING, 'from', first)
    redis.call('HSET', K_OPENING, 'to', first + n - 1)
  end
elseif mode == 'on' and serving == first - 1 and not recovering() then
  -- people recalled for a second chance come before newcomers
  free = free_slots(capacity, admit_per_minute) - redis.call('ZCARD', K_RECALL)
end
local ticket, walked_in = first - 1, 0
for i, ok in ipairs(accepted) do
  local sid = ARGV[REST + 2 * (i - 1)]
  if not ok then
    out[#out + 1] = 0
    out[#out + 1] = 0
  else
    ticket = ticket + 1
    if free > 0 then
      free = free - 1
      serving = ticket
      admit(sid, confirm_ms)
      walked_in = walked_in + 1
      out[#out + 1] = ticket
      out[#out + 1] = 1
    else
      free = 0
      -- negative: joined at this time and not seen since (see tick.lua)
      redis.call('ZADD', K_WAITING, -now_ms, ticket)
      count_in_line(ticket, 1)
      local addr = ARGV[REST + 2 * (i - 1) + 1]
      if joins_per_address > 0 and addr ~= '' then
        local key = base .. 'held:' .. addr
        redis.call('SADD', key, ticket)
        redis.call('EXPIRE', key, PLACE_TTL)
      end
      out[#out + 1] = ticket
      out[#out + 1] = 0
    end
  end
end
if serving >= first then
  redis.call('SET', K_SERVING, serving)
  line_moved = true
end
tally('j', n)
tally('w1', walked_in)  -- no time in line: the first wait bucket
return reply{places = out, epoch = epoch}
