-- The line summary on its own: what changed since the caller's version (a
-- process catching up after being cut short, or one that does not tick the queue).
-- Part: summary.lua. Arguments and reply: scripts.LINE (see line_since).
local line_version = tonumber(ARGV[1])
local line_epoch = ARGV[2]
local limit = tonumber(ARGV[3])
local tickets = tonumber(redis.call('GET', K_TICKETS) or '0')
local serving = tonumber(redis.call('GET', K_SERVING) or '0')
local line = line_since(line_version, line_epoch, limit, queue_epoch(), serving, tickets)
return reply{
  serving = serving, line_version = line.version, line_full = line.full, line_same = line.same,
  line_more = line.more, front = line.front, blocks = line.blocks,
}
