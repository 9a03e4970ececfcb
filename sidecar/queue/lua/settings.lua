-- Part: the queue's effective settings. Operator overrides stored in Redis win
-- over the replica's configuration; a value the configuration would refuse (a
-- typo, out of range) is ignored.
local function effective_settings(s)
  local overrides = redis.call('HGETALL', K_SETTINGS)
  for i = 1, #overrides, 2 do
    local name, value = overrides[i], overrides[i + 1]
    if name == 'mode' then
      if MODES[value] then s.mode = value end
    elseif name == 'shared_sessions' then
      if SHARED_SESSIONS[value] then s.shared_sessions = value end
    elseif name == 'order' then
      if ORDERS[value] then s.order = value end
    elseif name == 'access' then
      if ACCESS[value] then s.access = value end
    elseif OVERRIDE_LEAST[name] ~= nil then
      local n = tonumber(value)
      if n and n >= OVERRIDE_LEAST[name] and n <= 1e9 then s[name] = math.floor(n) end
    end
  end
  return s
end
