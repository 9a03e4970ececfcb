-- Every key of a queue expires unless its ticker runs, so queue names a client
-- chooses (a location taking the name from the URL) leave nothing forever. Two
-- TTLs a tick: once the epoch's has fallen QUEUE_KEEP_REFRESH seconds below
-- `keep` (or it has none: new, or made again), or the ticket counter has none
-- (the first join made it), every key gets `keep` again; keys made since the
-- last refresh get theirs within QUEUE_KEEP_REFRESH.
-- Not these: settings and access codes (an operator's, kept until forgotten);
-- history, rate, tally, minutes and recovery set their own expiry as they write.
local function keep_keys(keep)
  local ttl = redis.call('TTL', K_EPOCH)
  if ttl >= 0 and ttl > keep - QUEUE_KEEP_REFRESH and redis.call('TTL', K_TICKETS) ~= -1 then
    return
  end
  for _, key in ipairs{K_TICKETS, K_SERVING, K_WAITING, K_INVITED, K_ACTIVE, K_ENDED, K_REVOKED,
      K_MISSED, K_RECALL, K_LIVE, K_LINE_VERSION, K_LINE_LOG, K_OPENING, K_ORDER, K_RANK,
      K_EPOCH, K_SNAPSHOT} do
    redis.call('EXPIRE', key, keep)
  end
end
