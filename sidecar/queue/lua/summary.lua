-- Part: the line summary a process answers positions from (engine.LiveLine).
-- Exactly who is still in line among the next FRONT_WINDOW places after serving
-- (a string of 0/1, up to a block boundary); beyond, counts per block of
-- LIVE_BLOCK line numbers, of which a reader gets only the blocks changed since
-- the version it knows (keys.QueueKeys.line_version): a line with nothing
-- happening costs the same to read at a million waiters as at none.

local function line_front(serving, tickets)
  if opening_in_progress() then return '' end  -- no places yet: nobody is told one
  local window_end = math.min(tickets,
    (math.floor((serving + FRONT_WINDOW) / LIVE_BLOCK) + 1) * LIVE_BLOCK - 1)
  if window_end <= serving then return '' end
  local members = tickets_at(serving + 1, window_end)
  local bits = {}
  for i, score in ipairs(redis.call('ZMSCORE', K_WAITING, unpack(members))) do
    bits[i] = score and '1' or '0'
  end
  return table.concat(bits)
end

-- The summary for a reader who knows version `known` (0: nothing) of epoch
-- `known_epoch`: {version, full (1: start from nothing), front, blocks, more}.
-- blocks = {block, count, ...} changed since; more = 1: cut at `limit`, and
-- version is then the last change returned (read on from it).
local function line_since(known, known_epoch, limit, epoch, serving, tickets)
  local version = tonumber(redis.call('GET', K_LINE_VERSION) or '0')
  local full = 0
  if known_epoch ~= epoch or known > version then known, full = 0, 1 end
  if known == version then
    return {version = version, full = full, front = '', blocks = {}, more = 0, same = 1}
  end
  local log = redis.call('ZRANGEBYSCORE', K_LINE_LOG, '(' .. known, '+inf', 'WITHSCORES',
    'LIMIT', 0, limit)
  local blocks = {}
  for i = 1, #log, 2000 do
    local names = {}
    for j = i, math.min(i + 1999, #log), 2 do names[#names + 1] = log[j] end
    local counts = redis.call('HMGET', K_LIVE, unpack(names))
    for j, name in ipairs(names) do
      blocks[#blocks + 1] = name
      blocks[#blocks + 1] = tonumber(counts[j]) or 0
    end
  end
  local more = #log >= 2 * limit and 1 or 0
  if more == 1 then version = tonumber(log[#log]) end
  return {version = version, full = full, front = line_front(serving, tickets), blocks = blocks,
    more = more, same = 0}
end
