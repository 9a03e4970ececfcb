-- Part: the queue's effective settings. Operator overrides stored in Redis win
-- over the replica's configuration; a value the configuration would refuse (a
-- typo, out of range) is ignored.
local CHOICES = {mode = MODES, shared_sessions = SHARED_SESSIONS, challenge = CHALLENGES,
  flagged = FLAGGED, order = ORDERS, access = ACCESS}

local function effective_settings(s)
  local overrides = redis.call('HGETALL', K_SETTINGS)
  for i = 1, #overrides, 2 do
    local name, value = overrides[i], overrides[i + 1]
    if CHOICES[name] then
      if CHOICES[name][value] then s[name] = value end
    elseif OVERRIDE_LEAST[name] ~= nil then
      local n = tonumber(value)
      if n and n >= OVERRIDE_LEAST[name] and n <= (OVERRIDE_MOST[name] or 1e9) then
        s[name] = math.floor(n)
      end
    end
  end
  return s
end
