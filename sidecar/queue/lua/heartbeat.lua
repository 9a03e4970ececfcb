-- Applies one replica's batch of "still here" signals. A session that made a
-- request with a valid cookie is extended (GT: never shortened). One that
-- Redis no longer counts and that was not ended (Redis lost it: a restart
-- without persistence) comes back only where a newcomer would be let in at once
-- (mode on, nobody in line or recalled, room); otherwise it ends like a leave,
-- so every replica refuses the cookie and the visitor joins the line again:
-- capacity and the line's order hold.
-- Shared cookies: the client addresses a session was used from are kept for
-- a window (one ZSET per session, address -> last seen, under the queue's hash
-- tag); beyond max_addresses at once it is reported, and with 'revoke' ended.
-- ARGV: session_ttl_ms, capacity, ended maxlen, mode, shared_sessions, max_addresses,
--       window_ms, addresses kept, address key prefix, number of session ids n,
--       session ids..., n comma-separated address lists, waiting tickets...
-- Returns {sessions counted, sessions ended, {sid, addresses, revoked (0/1), ...}}
local ttl_ms, capacity, maxlen, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local policy, max_addresses, window_ms = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local kept, prefix, n = tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10])
local counted, ended, shared = 0, 0, {}
local until_sec = now_sec + math.ceil(ttl_ms / 1000)
local open = mode == 'on' and redis.call('ZCARD', K_WAITING) == 0
  and redis.call('ZCARD', K_RECALL) == 0

local function end_session(sid)
  redis.call('ZREM', K_ACTIVE, sid)
  redis.call('ZADD', K_REVOKED, until_sec, sid)
  redis.call('XADD', K_ENDED, 'MAXLEN', '~', maxlen, '*', 'sid', sid, 'until', until_sec)
end

-- How many addresses the session used within the window, this batch's included.
local function addresses(sid, list)
  local key = prefix .. sid
  for addr in string.gmatch(list, '[^,]+') do redis.call('ZADD', key, now_ms, addr) end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (now_ms - window_ms))
  local count = redis.call('ZCARD', key)
  if count > kept then redis.call('ZREMRANGEBYRANK', key, 0, count - kept - 1) end
  redis.call('PEXPIRE', key, window_ms)
  return count
end

for i = 11, 10 + n do
  local sid, list = ARGV[i], ARGV[i + n]
  if not redis.call('ZSCORE', K_REVOKED, sid) then
    local live = true
    if redis.call('ZSCORE', K_ACTIVE, sid) then
      redis.call('ZADD', K_ACTIVE, 'GT', now_ms + ttl_ms, sid)
    elseif open and (capacity == 0
        or redis.call('ZCARD', K_ACTIVE) + redis.call('ZCARD', K_INVITED) < capacity) then
      redis.call('ZADD', K_ACTIVE, now_ms + ttl_ms, sid)
    else
      end_session(sid)
      ended = ended + 1
      live = false
    end
    if live then
      counted = counted + 1
      if policy ~= 'allow' and list ~= '' then
        local count = addresses(sid, list)
        if count > max_addresses then
          local revoke = policy == 'revoke'
          if revoke then
            end_session(sid)
            redis.call('DEL', prefix .. sid)
          end
          shared[#shared + 1] = sid
          shared[#shared + 1] = count
          shared[#shared + 1] = revoke and 1 or 0
        end
      end
    end
  end
end
-- XX: a waiter who left or was invited is not put back in line
for i = 11 + 2 * n, #ARGV do
  redis.call('ZADD', K_WAITING, 'XX', 'GT', now_ms, ARGV[i])
end
return {counted, ended, shared}
