-- The ticker's call: purge, open a scheduled queue when due, advance the line
-- by the free capacity, record the dashboard's history point (and close the
-- minute that ended into its record: history.lua), publish the
-- queue's state as a versioned snapshot (snapshot.lua) that the other replicas
-- read when its version moves, and report it with what changed in its line
-- summary since the caller's version. One process at a time runs it (the
-- queue's lease, refresher.py), but it stays idempotent: two replicas running
-- it together invite each waiter once, because the script is atomic and reads
-- the stored counters. Every step is capped (a few ms at most); `more` says
-- capped work is left for the next call.
-- Parts: settings.lua, shuffle.lua, advance.lua, summary.lua, history.lua, snapshot.lua,
-- keep.lua.
-- Arguments and reply: scripts.TICK (the configured settings, then the
-- replica's purge slack, what it last saw of the queue (prelude.lua
-- queue_epoch), the line summary version it knows with that version's
-- queue epoch, the configured order and access, and a random number for draws).
local capacity = tonumber(ARGV[1])
local admit_per_minute = tonumber(ARGV[2])
local session_ttl = tonumber(ARGV[3])
local grace = tonumber(ARGV[4])
local abandon_after = tonumber(ARGV[5])
local mode = ARGV[6]
local session_max = tonumber(ARGV[7])
local opens_at = ARGV[8]
local joins_per_address = tonumber(ARGV[9])
local shared_sessions = ARGV[10]
local max_addresses = tonumber(ARGV[11])
local challenge = ARGV[12]
local challenge_difficulty = tonumber(ARGV[13])
local flagged = ARGV[14]
local purge_slack_ms = tonumber(ARGV[15])
local known_epoch = ARGV[16]
local known_tickets = ARGV[17]
local known_serving = ARGV[18]
local recovery_ms = ARGV[19]
local line_version = tonumber(ARGV[20])
local line_epoch = ARGV[21]
local eta = tonumber(ARGV[22])
local order = ARGV[23]
local access = ARGV[24]
local draw_seed = ARGV[25]  -- random order: the caller's fresh random number (advance.lua)
local closes_at = tonumber(ARGV[26])

local s = effective_settings{
  capacity = capacity, admit_per_minute = admit_per_minute, session_ttl = session_ttl,
  grace = grace, abandon_after = abandon_after, mode = mode, session_max = session_max,
  joins_per_address = joins_per_address, shared_sessions = shared_sessions,
  max_addresses = max_addresses, challenge = challenge,
  challenge_difficulty = challenge_difficulty, flagged = flagged,
  order = order, access = access, draw_seed = draw_seed, closes_at = closes_at,
}
local grace_ms = s.grace * 1000
s.opens_at = effective_opens_at(opens_at)
local closed = is_closed(s.opens_at)
local epoch = queue_epoch(known_epoch, known_tickets, known_serving, recovery_ms)

local lapsed = purge(grace_ms)
local expired = end_idle_sessions(purge_slack_ms, s.session_ttl)
redis.call('ZREMRANGEBYSCORE', K_REVOKED, '-inf', '(' .. now_sec)
-- Waiters who stopped polling leave the line here: seen too long ago (positive
-- scores), or never seen since joining longer ago than the first-poll window
-- (negative scores, see join.lua); PRUNE_MAX a call.
local pruned = leave_line_by_score(0, '(' .. (now_ms - s.abandon_after * 1000), PRUNE_MAX)
pruned = pruned + leave_line_by_score('(' .. -(now_ms - FIRST_POLL_WINDOW_MS), '(0',
  PRUNE_MAX - pruned)
local more = pruned >= PRUNE_MAX

local opened = open_if_due(closed)
local opening = opening_in_progress()

local tickets = tonumber(redis.call('GET', K_TICKETS) or '0')
local serving = tonumber(redis.call('GET', K_SERVING) or '0')
local invited, skipped, unseen = 0, 0, 0
-- nobody is invited before a scheduled opening, while its order is written,
-- while a lost line is being rebuilt (recovering: the line stands still), nor
-- once the queue closed (mode closed, or its scheduled closes_at passed)
local past_close = s.closes_at > 0 and now_sec >= s.closes_at
if (s.mode == 'on' or s.mode == 'queue-all') and not closed and not opening
    and not recovering() and not past_close then
  local capped
  serving, invited, skipped, capped, unseen = advance(s, grace_ms, serving, tickets, purge_slack_ms)
  more = more or capped
end
local minute = admitted_recently()

line_publish()  -- this call's own changes are in the summary it reports
local line = line_since(line_version, line_epoch, LINE_CHUNK, epoch, serving, tickets)

local sh_first, sh_last = shuffled_range()
local state = {
  tickets = tickets, serving = serving, waiting = redis.call('ZCARD', K_WAITING),
  active = redis.call('ZCARD', K_ACTIVE), invited = redis.call('ZCARD', K_INVITED),
  admitted_last_minute = minute,
  mode = s.mode, capacity = s.capacity, admit_per_minute = s.admit_per_minute,
  session_ttl = s.session_ttl, grace = s.grace, abandon_after = s.abandon_after,
  session_max = s.session_max, opens_at = s.opens_at, joins_per_address = s.joins_per_address,
  shared_sessions = s.shared_sessions, max_addresses = s.max_addresses,
  challenge = s.challenge, challenge_difficulty = s.challenge_difficulty, flagged = s.flagged,
  recalled = redis.call('ZCARD', K_RECALL), line_version = line.version,
  closed = closed and 1 or 0, opening = opening and 1 or 0,
  shuffled_first = sh_first, shuffled_last = sh_last,
  seed = redis.call('HGET', K_OPENING, 'seed') or '0', epoch = epoch,
  order = s.order, access = s.access, in_draw = s.order == 'random' and in_draw(s) or 0,
  closes_at = s.closes_at, texts = s.texts,
}
record_history(state.waiting, state.active, minute)
tally('p', pruned)
tally('s', unseen)
record_minutes(state.waiting, state.active, eta)
state.version, state.changed = publish_snapshot(state)  -- what every other replica reads
-- the keys outlive every token that may still name this epoch (keys.queue_keep)
keep_keys(math.max(PLACE_TTL, s.session_max, s.session_ttl) + QUEUE_KEEP_MARGIN)
-- what only the caller needs: its clock, this tick's counts, its summary's changes
state.redis_time_ms = now_ms
state.expired, state.lapsed, state.newly_invited, state.skipped = expired, lapsed, invited, skipped
state.unseen = unseen
state.pruned, state.more, state.opened = pruned, more and 1 or 0, opened
state.line_full, state.line_same, state.line_more = line.full, line.same, line.more
state.front, state.blocks = line.front, line.blocks
return reply(state)
