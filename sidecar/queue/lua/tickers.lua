-- Every replica's one call per refresh on the key that holds every queue's
-- ticker lease and version (keys.TICKERS_KEY; the queue keys of the prelude are
-- not used): renews or takes the leases it asks for (its own, or free, or
-- expired: the holder died or stalled), and gives back those it forgot. The
-- versions and leases themselves are read with a plain HGETALL/HMGET beside it
-- (engine.tickers), so Lua handles only the claimed ones. Lease values are
-- "holder deadline_ms". Arguments and reply: scripts.TICKERS.
local holder = ARGV[1]
local lease_ms = tonumber(ARGV[2])
local claims = tonumber(ARGV[3])
local releases = tonumber(ARGV[4])

local K = KEYS[1]

local function holder_of(value)
  if not value then return nil, 0 end
  local who, deadline = string.match(value, '^(%S+) (%d+)$')
  return who, tonumber(deadline) or 0
end

local held = {}
if claims > 0 then
  local fields = {}
  for i = 0, claims - 1 do fields[#fields + 1] = 'l:' .. ARGV[REST + i] end
  local current = redis.call('HMGET', K, unpack(fields))
  local renewed = {}
  local mine = holder .. ' ' .. string.format('%d', now_ms + lease_ms)
  for i = 1, claims do
    local who, deadline = holder_of(current[i])
    if who == nil or who == holder or deadline < now_ms then
      renewed[#renewed + 1] = fields[i]
      renewed[#renewed + 1] = mine
      held[i] = 1
    else
      held[i] = 0
    end
  end
  if #renewed > 0 then redis.call('HSET', K, unpack(renewed)) end
end

local base = REST + claims
for i = 0, releases - 1 do
  local field = 'l:' .. ARGV[base + i]
  if holder_of(redis.call('HGET', K, field)) == holder then
    -- the version goes too: a reader that still knows the queue reads it again
    redis.call('HDEL', K, field, 'v:' .. ARGV[base + i])
  end
end

return reply{now_ms = now_ms, held = held}
