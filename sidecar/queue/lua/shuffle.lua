-- Part: the opening of a scheduled queue. The first tick after the opening time
-- (atomic, so exactly one replica) draws the pre-queue's order, once: a small
-- pre-queue is shuffled here; a big one gets a seed and the "opening" state, and
-- the sidecar writes the order it replays from the seed in short calls
-- (open.lua). Everyone who joins later has a higher ticket and queues FIFO behind.

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

-- 4 bytes per place, packed 256 at a time (one struct.pack call each)
local function packed(values, count)
  local out = {}
  for i = 1, count, 256 do
    local k = math.min(256, count - i + 1)
    out[#out + 1] = struct.pack('>' .. string.rep('I4', k), unpack(values, i, i + k - 1))
  end
  return table.concat(out)
end

-- Moves the live counts of pre-queue tickets first+a..first+b (offsets) still in
-- line from their ticket's block to their drawn line number's block.
local function move_counts(first, a, b, rank_of)
  local members = {}
  for i = a, b do members[#members + 1] = first + i end
  local delta = {}
  for i, score in ipairs(redis.call('ZMSCORE', K_WAITING, unpack(members))) do
    if score then
      local t = first + a + i - 1
      local from_block = math.floor(t / LIVE_BLOCK)
      local to_block = math.floor((first + rank_of(a + i - 1)) / LIVE_BLOCK)
      delta[from_block] = (delta[from_block] or 0) - 1
      delta[to_block] = (delta[to_block] or 0) + 1
    end
  end
  for block, d in pairs(delta) do
    if d ~= 0 then count_in_line(block * LIVE_BLOCK, d) end
  end
end

-- Returns 1 if this call drew the order (inline, or the seed of a chunked opening).
local function open_if_due(closed)
  local pending = redis.call('HMGET', K_OPENING, 'from', 'to')
  if closed or not pending[1] then return 0 end
  local first, last = tonumber(pending[1]), tonumber(pending[2])
  local count = last - first + 1
  local h = redis.call('TIME')
  local seed = tonumber(string.sub(redis.sha1hex(K_OPENING .. h[1] .. '.' .. h[2] .. '.' .. count),
    1, 13), 16)
  redis.call('HDEL', K_OPENING, 'from', 'to')
  -- %d: a 52-bit seed would lose digits in Lua's default number format
  redis.call('HSET', K_OPENING, 'first', first, 'last', last, 'seed', string.format('%d', seed),
    'at', now_ms)
  if count > OPEN_INLINE_MAX then
    -- nothing placed, nothing written yet: open.lua takes it from here
    redis.call('DEL', K_ORDER, K_RANK)
    redis.call('HSET', K_OPENING, 'written', 0, 'moved', 0)
    shuffled = {first, last, first - 1}
    return 1
  end
  local a = shuffled_order(seed, count)
  local rank = {}
  for i = 1, count do rank[i] = 0 end  -- filled in order first: Lua keeps it an array
  for i = 1, count do rank[a[i] + 1] = i - 1 end
  redis.call('SET', K_ORDER, packed(a, count))
  redis.call('SET', K_RANK, packed(rank, count))
  move_counts(first, 0, count - 1, function(i) return rank[i + 1] end)
  shuffled = {first, last, last}
  line_moved = true
  return 1
end
