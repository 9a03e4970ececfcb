-- A big opening, written in short calls: the order the sidecar replayed from the
-- seed the tick drew (engine.shuffled_order), `offset` places at a time into the
-- order and rank strings, then the live counts of who is still in line moved
-- from their ticket's block to their new place's block, `move` tickets a call.
-- Racing replicas send the same bytes: a chunk at another offset than the one
-- written next is ignored, so each place is written once and counted once.
-- Part: shuffle.lua. Arguments and reply: scripts.OPEN. written, moved: places
-- done (-1, -1: not this opening, or already done); done = 1 once complete.
local seed = ARGV[1]
local offset = tonumber(ARGV[2])
local order = ARGV[3]
local rank = ARGV[4]
local move = tonumber(ARGV[5])
local o = redis.call('HMGET', K_OPENING, 'seed', 'first', 'last', 'written', 'moved')
if o[1] ~= seed or not o[5] then return reply{written = -1, moved = -1, done = 1} end
local first, last = tonumber(o[2]), tonumber(o[3])
local written, moved = tonumber(o[4]), tonumber(o[5])
local count = last - first + 1
if offset == written and #order > 0 and #order == #rank and #order % 4 == 0
    and written + #order / 4 <= count then
  redis.call('SETRANGE', K_ORDER, 4 * offset, order)
  redis.call('SETRANGE', K_RANK, 4 * offset, rank)
  written = written + #order / 4
  redis.call('HSET', K_OPENING, 'written', written)
end
local done = 0
if written == count and move > 0 then
  local a, b = moved, math.min(moved + move, count) - 1
  local packed = redis.call('GETRANGE', K_RANK, 4 * a, 4 * b + 3)
  move_counts(first, a, b, function(i) return struct.unpack('>I4', packed, 4 * (i - a) + 1) end)
  moved = b + 1
  if moved == count then
    -- every place drawn and counted: the line moves on in its new order
    redis.call('HDEL', K_OPENING, 'written', 'moved')
    redis.call('HSET', K_OPENING, 'at', now_ms)
    line_moved = true
    done = 1
  else
    redis.call('HSET', K_OPENING, 'moved', moved)
  end
end
return reply{written = written, moved = moved, done = done}
