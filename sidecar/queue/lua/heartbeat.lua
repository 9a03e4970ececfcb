-- Applies one replica's batch of "still here" signals. A session that made a
-- request with a valid cookie is extended (GT: never shortened). One that
-- Redis no longer counts and that was not ended (Redis lost it: a restart
-- without persistence) comes back only where a newcomer would be let in at once
-- (mode on, nobody in line or recalled, room), or with room within the recovery
-- window after the loss (prelude.lua queue_epoch); otherwise it ends like a leave,
-- so every replica refuses the cookie and the visitor joins the line again:
-- capacity and the line's order hold.
-- Shared cookies: the client addresses a session was used from are addresses_kept for
-- a window (one ZSET per session, address -> last seen, under the queue's hash
-- tag); beyond max_addresses at once it is reported, and with 'revoke' ended.
-- Arguments and reply: scripts.HEARTBEAT. The tail: `sessions` session ids, as many comma-separated
-- address lists, then waiting tickets. shared = {sid, addresses, revoked (0/1), ...};
-- gone = the waiting tickets no longer in line
local session_ttl_ms = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local mode = ARGV[3]
local shared_sessions = ARGV[4]
local max_addresses = tonumber(ARGV[5])
local window_ms = tonumber(ARGV[6])
local addresses_kept = tonumber(ARGV[7])
local address_prefix = ARGV[8]
local sessions = tonumber(ARGV[9])
local counted, ended, shared = 0, 0, {}
local until_sec = now_sec + math.ceil(session_ttl_ms / 1000)
-- After Redis lost the queue, sessions coming back within the recovery window
-- are counted first, whoever waits: they were inside before anyone now in line.
local open = recovering() or (mode == 'on' and redis.call('ZCARD', K_WAITING) == 0
  and redis.call('ZCARD', K_RECALL) == 0)

-- why: 'shared' for a cookie revoked for sharing (every replica's refresher reads it:
-- with flagged = infinite its holder gets a line that never moves), else 'lost'
local function end_session(sid, why)
  redis.call('ZREM', K_ACTIVE, sid)
  redis.call('ZADD', K_REVOKED, until_sec, sid)
  redis.call('XADD', K_ENDED, 'MAXLEN', '~', ENDED_STREAM_MAXLEN, '*', 'sid', sid, 'until', until_sec,
    'why', why)
end

-- How many addresses the session used within the window, this batch's included.
local function addresses(sid, list)
  local key = address_prefix .. sid
  for addr in string.gmatch(list, '[^,]+') do redis.call('ZADD', key, now_ms, addr) end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (now_ms - window_ms))
  local count = redis.call('ZCARD', key)
  if count > addresses_kept then redis.call('ZREMRANGEBYRANK', key, 0, count - addresses_kept - 1) end
  redis.call('PEXPIRE', key, window_ms)
  return count
end

for i = REST, REST + sessions - 1 do
  local sid, list = ARGV[i], ARGV[i + sessions]
  if not redis.call('ZSCORE', K_REVOKED, sid) then
    local live = true
    if redis.call('ZSCORE', K_ACTIVE, sid) then
      redis.call('ZADD', K_ACTIVE, 'GT', now_ms + session_ttl_ms, sid)
    elseif open and (capacity == 0
        or redis.call('ZCARD', K_ACTIVE) + redis.call('ZCARD', K_INVITED) < capacity) then
      redis.call('ZADD', K_ACTIVE, now_ms + session_ttl_ms, sid)
    else
      end_session(sid, 'lost')
      ended = ended + 1
      live = false
    end
    if live then
      counted = counted + 1
      if shared_sessions ~= 'allow' and list ~= '' then
        local count = addresses(sid, list)
        if count > max_addresses then
          local revoke = shared_sessions == 'revoke'
          if revoke then
            end_session(sid, 'shared')
            redis.call('DEL', address_prefix .. sid)
          end
          shared[#shared + 1] = sid
          shared[#shared + 1] = count
          shared[#shared + 1] = revoke and 1 or 0
        end
      end
    end
  end
end
-- A waiter who left the line (invited, drawn, left or pruned) is not put back in
-- it, and is reported in `gone`: in random order only this says a draw came.
local gone = {}
if #ARGV >= REST + 2 * sessions then
  local scores = redis.call('ZMSCORE', K_WAITING, unpack(ARGV, REST + 2 * sessions, #ARGV))
  for j, score in ipairs(scores) do
    local t = ARGV[REST + 2 * sessions + j - 1]
    if score then redis.call('ZADD', K_WAITING, 'XX', 'GT', now_ms, t) else gone[#gone + 1] = t end
  end
end
return reply{counted = counted, ended = ended, shared = shared, gone = gone}
