-- Part: the queue's effective settings. Operator overrides stored in Redis win
-- over the replica's configuration; a value the configuration would refuse (a
-- typo, out of range) is ignored. Texts for the pages (the message to the line
-- and its language variants, the closed page's link) are gathered in s.texts, a
-- JSON object the replicas check by the configuration's rule (engine._state).
local CHOICES = {mode = MODES, shared_sessions = SHARED_SESSIONS, challenge = CHALLENGES,
  flagged = FLAGGED, order = ORDERS, access = ACCESS}

local function effective_settings(s)
  local overrides = redis.call('HGETALL', K_SETTINGS)
  local texts = {}
  for i = 1, #overrides, 2 do
    local name, value = overrides[i], overrides[i + 1]
    if CHOICES[name] then
      if CHOICES[name][value] then s[name] = value end
    elseif name == 'closes_at' then
      local n = tonumber(value)
      if n and n >= 0 and n <= OPENS_AT_MAX then s.closes_at = math.floor(n) end
    elseif TEXT_SETTINGS[name] or string.match(name, '^message_%l%l%l?$') then
      if #value <= TEXT_BYTES_MAX then texts[name] = value end
    elseif OVERRIDE_LEAST[name] ~= nil then
      local n = tonumber(value)
      if n and n >= OVERRIDE_LEAST[name] and n <= (OVERRIDE_MOST[name] or 1e9) then
        s[name] = math.floor(n)
      end
    end
  end
  s.texts = cjson.encode(texts)
  return s
end
