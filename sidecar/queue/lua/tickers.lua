-- Every replica's one call per refresh, on the one key that lists every queue's
-- ticker lease and version (keys.TICKERS_KEY; the queue keys of the prelude are
-- not used). It reads the version and lease of each queue the replica knows (one
-- HMGET), renews or takes the leases it asks for (its own, or free, or expired:
-- the holder died or stalled), and gives back those it forgot. Lease values are
-- "holder deadline_ms"; only the claimed ones are parsed here, so the call costs
-- O(known) in C and O(claimed) in Lua. Arguments and reply: scripts.TICKERS.
local holder = ARGV[1]
local lease_ms = tonumber(ARGV[2])
local reads = tonumber(ARGV[3])
local claims = tonumber(ARGV[4])
local releases = tonumber(ARGV[5])

local K = KEYS[1]
local versions, leases = {}, {}
-- HMGET in slices: unpack() is bounded by Lua's C stack
for lo = 0, reads - 1, 2000 do
  local fields = {}
  for i = lo, math.min(lo + 1999, reads - 1) do
    local q = ARGV[REST + i]
    fields[#fields + 1] = 'v:' .. q
    fields[#fields + 1] = 'l:' .. q
  end
  local values = redis.call('HMGET', K, unpack(fields))
  for j = 1, #fields, 2 do
    versions[#versions + 1] = values[j] or ''
    leases[#leases + 1] = values[j + 1] or ''
  end
end

local function holder_of(value)
  if not value then return nil, 0 end
  local who, deadline = string.match(value, '^(%S+) (%d+)$')
  return who, tonumber(deadline) or 0
end

local held = {}
local base = REST + reads
if claims > 0 then
  local fields = {}
  for i = 0, claims - 1 do fields[#fields + 1] = 'l:' .. ARGV[base + i] end
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

base = base + claims
if releases > 0 then
  for i = 0, releases - 1 do
    local field = 'l:' .. ARGV[base + i]
    if holder_of(redis.call('HGET', K, field)) == holder then
      -- the version goes too: a reader that still knows the queue reads it again
      redis.call('HDEL', K, field, 'v:' .. ARGV[base + i])
    end
  end
end

return reply{now_ms = now_ms, versions = versions, leases = leases, held = held}
