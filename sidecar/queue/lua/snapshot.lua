-- The queue's state as the ticker saw it, for every other replica: stored as a
-- JSON array in the order of SNAPSHOT_FIELDS (scripts.SNAPSHOT), with a version
-- that moves only when something in it changed, so replicas that watch the
-- version (refresher.py) read the body once per change, never once per tick.
local function publish_snapshot(state)
  local values = {}
  for i, name in ipairs(SNAPSHOT_FIELDS) do values[i] = state[name] end
  local body = cjson.encode(values)
  local old = redis.call('HMGET', K_SNAPSHOT, 'body', 'version')
  local version = tonumber(old[2]) or 0
  if old[1] == body then return version, 0 end
  version = version + 1
  redis.call('HSET', K_SNAPSHOT, 'body', body, 'version', version, 'at', now_ms)
  return version, 1
end
