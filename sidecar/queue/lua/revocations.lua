-- Part: ended sessions since the replica's last read of the ended stream. A new
-- replica, or one that fell behind the capped stream, must reload every
-- revocation still in force instead: it is told where the stream stands (reload)
-- and reads them in chunks (revoked.lua) before reading the stream on from there.
local function id_lt(a, b)
  local a1, a2 = string.match(a, '^(%d+)-(%d+)$')
  local b1, b2 = string.match(b, '^(%d+)-(%d+)$')
  a1, a2, b1, b2 = tonumber(a1), tonumber(a2), tonumber(b1), tonumber(b2)
  return a1 < b1 or (a1 == b1 and a2 < b2)
end

-- {stream id, sid, until, ...}, and the stream id to reload from ('' = no reload)
local function ended_since(last)
  local ended = {}
  if redis.call('EXISTS', K_ENDED) == 0 then return ended, '' end
  local info = redis.call('XINFO', 'STREAM', K_ENDED)
  local fields = {}
  for i = 1, #info, 2 do fields[info[i]] = info[i + 1] end
  local newest, oldest = fields['last-generated-id'], fields['recorded-first-entry-id']
  -- some entries were trimmed, and maybe some this replica had not read yet
  local behind = tonumber(fields['entries-added']) > tonumber(fields['length'])
    and id_lt(last, oldest)
  if last == '0-0' or behind then return ended, newest end
  for _, entry in ipairs(redis.call('XRANGE', K_ENDED, '(' .. last, '+', 'COUNT', 1000)) do
    local f = entry[2]
    table.insert(ended, entry[1])
    table.insert(ended, f[2])
    table.insert(ended, f[4])
  end
  return ended, ''
end
