"""Lua scripts of the Redis adapter: each turns a check-then-act into one atomic round trip.

Ledger values (key ``murmur:ledger:<agent>:<task_id>``): ``R<consumer_id>`` while a
consumer runs the task (PX = its lease), ``D<result body>`` once it finished
(PX = the remember TTL). An expired lease is simply a missing key.
"""

from __future__ import annotations

# KEYS = ledger keys; ARGV[1] = consumer id, ARGV[2] = lease ms.
# Returns one {state, payload} per key: 1 = claimed, 2 = done (result), 3 = busy (owner).
CLAIM = """
local mine = 'R' .. ARGV[1]
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  local kind = v and string.sub(v, 1, 1)
  if kind == 'D' then
    out[i] = {2, string.sub(v, 2)}
  elseif kind == 'R' and v ~= mine then
    out[i] = {3, string.sub(v, 2)}
  else
    redis.call('SET', key, mine, 'PX', ARGV[2])
    out[i] = {1, ''}
  end
end
return out
"""

# Shared prologue: the entry ids in ARGV[4..] this consumer still owns in the group.
# A lease is renewed or handed back only for entries still ours: one that another member
# already reclaimed must not be pulled back (XCLAIM with min-idle 0 would steal it).
_OWNED = """
local owned = {}
for i = 4, #ARGV do
  local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if type(p) == 'table' and p[1] and p[1][2] == ARGV[2] then
    owned[#owned + 1] = ARGV[i]
  end
end
local function xclaim(...)
  if #owned == 0 then return end
  local args = {KEYS[1], ARGV[1], ARGV[2], 0}
  for _, id in ipairs(owned) do args[#args + 1] = id end
  for _, opt in ipairs({...}) do args[#args + 1] = opt end
  redis.call('XCLAIM', unpack(args))
end
local mine = 'R' .. ARGV[2]
"""

# KEYS[1] = task stream, KEYS[2..] = ledger keys; ARGV = group, consumer, lease ms, ids...
# XCLAIM ... JUSTID resets an entry's idle time without counting a delivery.
EXTEND = (
    _OWNED
    + """
xclaim('JUSTID')
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == mine then redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
end
return #owned
"""
)

# Same arguments as EXTEND. IDLE makes the entries look idle for ten years, so the next
# XAUTOCLAIM of any member takes them (and counts that delivery).
RELEASE = (
    _OWNED
    + """
xclaim('IDLE', '315360000000', 'JUSTID')
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == mine then redis.call('DEL', KEYS[i]) end
end
return #owned
"""
)

# KEYS[1] = task stream. Trims entries that every group has delivered and acknowledged:
# floor = min over groups of (oldest pending id, else last-delivered-id + 1); everything
# below the floor is gone from every PEL and was delivered everywhere. MINID ~ only drops
# whole radix-tree nodes below the floor, so it never removes an entry >= floor.
# Returns the number of entries removed; a stream without groups is left alone.
TRIM = """
local groups = redis.pcall('XINFO', 'GROUPS', KEYS[1])
if type(groups) ~= 'table' or groups.err or #groups == 0 then return 0 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq), ms
end
local best_ms, best_seq, best
for _, g in ipairs(groups) do
  local info = {}
  for j = 1, #g, 2 do info[g[j]] = g[j + 1] end
  local floor
  if tonumber(info['pending']) > 0 then
    floor = redis.call('XPENDING', KEYS[1], info['name'])[2]
  else
    local _, seq, ms = parse(info['last-delivered-id'])
    floor = ms .. '-' .. string.format('%d', seq + 1)
  end
  local ms, seq = parse(floor)
  if best == nil or ms < best_ms or (ms == best_ms and seq < best_seq) then
    best_ms, best_seq, best = ms, seq, floor
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', '~', best)
"""

# KEYS[1] = task stream; ARGV = group, idle ms, consumer ids that must stay.
# Deletes group members with nothing pending that have not been seen for ARGV[2] ms
# (crashed workers with throwaway ids), so the member count stays meaningful. Safe: a
# member with no pending entries owns nothing, and a live one is re-created by its next
# XREADGROUP. Returns how many were deleted.
PRUNE = """
local members = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if type(members) ~= 'table' or members.err then return 0 end
local keep = {}
for i = 3, #ARGV do keep[ARGV[i]] = true end
local removed = 0
for _, m in ipairs(members) do
  local info = {}
  for j = 1, #m, 2 do info[m[j]] = m[j + 1] end
  if not keep[info['name']] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""

# KEYS[1] = task stream; ARGV = group, consumer, entry ids still outstanding...
# Closing a member: entries in its PEL that it never handed out (a read cut short by
# cancellation, leftovers of an earlier run) are handed back at once, like RELEASE;
# outstanding ones stay as they are (the contract). It leaves the group only when it
# holds nothing: XGROUP DELCONSUMER would drop pending entries, which must stay
# reclaimable. Returns how many entries were handed back.
LEAVE = """
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 10000, ARGV[2])
if type(p) ~= 'table' or p.err then return 0 end
if #p == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
  return 0
end
local keep = {}
for i = 3, #ARGV do keep[ARGV[i]] = true end
local function hand_back(ids)
  if #ids == 0 then return end
  ids[#ids + 1], ids[#ids + 2], ids[#ids + 3] = 'IDLE', '315360000000', 'JUSTID'
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))
end
local batch, n = {}, 0
for _, e in ipairs(p) do
  if not keep[e[1]] then
    batch[#batch + 1] = e[1]
    n = n + 1
    if #batch == 1000 then
      hand_back(batch)
      batch = {}
    end
  end
end
hand_back(batch)
return n
"""

# KEYS[1] = task stream; ARGV[1] = a group's last-delivered-id. Entries after it: the
# group's lag on servers that do not report one (Redis < 7, or after deletions).
COUNT_AFTER = """
local n, start = 0, '(' .. ARGV[1]
while true do
  local page = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 1000)
  n = n + #page
  if #page < 1000 then return n end
  start = '(' .. page[#page][1]
end
"""

# The write batch of _redis_batch.WriteBatcher: a whole coalesced batch of completions
# and publishes as one atomic script call with a tiny reply. (A MULTI/EXEC pipeline costs
# a QUEUED reply plus a result per command, which dominates the client's CPU.)
# No KEYS: a coalesced batch touches many keys by design (single-node Redis only; a
# cluster would need per-slot batches). ARGV is a sequence of ops:
#   W                                  the next caller's write starts (error attribution)
#   S key value ttl_ms | D key         ledger: SET ... PX ttl | DEL
#   X key maxlen nfields f v ...       XADD key [MAXLEN ~ maxlen (if not 0)] * f v ...
#   E key ttl_ms                       PEXPIRE (results/events streams)
#   A key n id...                      XACK key key id... (the group is named after key)
# Returns the failures: {write number, error} or {-(ack op number), error}.
WRITE = """
local errs = {}
local w, a, i, n = 0, 0, 1, #ARGV
local function check(r, who)
  if type(r) == 'table' and r.err then errs[#errs + 1] = {who, r.err} end
end
while i <= n do
  local op = ARGV[i]
  if op == 'W' then
    w = w + 1
    i = i + 1
  elseif op == 'X' then
    local key, maxlen, nf = ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
    local args = {key}
    if maxlen ~= '0' then
      args[2], args[3], args[4] = 'MAXLEN', '~', maxlen
    end
    args[#args + 1] = '*'
    for j = i + 4, i + 3 + nf do args[#args + 1] = ARGV[j] end
    check(redis.pcall('XADD', unpack(args)), w)
    i = i + 4 + nf
  elseif op == 'S' then
    check(redis.pcall('SET', ARGV[i + 1], ARGV[i + 2], 'PX', ARGV[i + 3]), w)
    i = i + 4
  elseif op == 'D' then
    check(redis.pcall('DEL', ARGV[i + 1]), w)
    i = i + 2
  elseif op == 'E' then
    redis.pcall('PEXPIRE', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  elseif op == 'A' then
    a = a + 1
    local key, k = ARGV[i + 1], tonumber(ARGV[i + 2])
    check(redis.pcall('XACK', key, key, unpack(ARGV, i + 3, i + 2 + k)), -a)
    i = i + 3 + k
  else
    return redis.error_reply('murmur write batch: unknown op ' .. tostring(op))
  end
end
return errs
"""

# Presence (DESIGN §5): KEYS[1] = hash worker id -> record, KEYS[2] = sorted set
# worker id -> expiry (unix ms by the *server's* clock, so writers and readers on hosts
# with skewed clocks agree). Both change together, inside one script.
_SERVER_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# ARGV[1] = worker id, ARGV[2] = record, ARGV[3] = ttl ms.
PRESENCE_PUT = (
    _SERVER_NOW
    + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

# ARGV[1] = worker id.
PRESENCE_DROP = """
redis.call('HDEL', KEYS[1], ARGV[1])
return redis.call('ZREM', KEYS[2], ARGV[1])
"""

# Prunes expired members (nobody else cleans up after a killed worker), then returns the
# records of the live ones; HMGET in chunks stays under Lua's unpack() limit.
PRESENCE_LIST = (
    _SERVER_NOW
    + """
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for i = 1, #gone do
  redis.call('HDEL', KEYS[1], gone[i])
end
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')
local out = {}
for i = 1, #live, 1000 do
  local vals = redis.call('HMGET', KEYS[1], unpack(live, i, math.min(i + 999, #live)))
  for j = 1, #vals do
    if vals[j] then out[#out + 1] = vals[j] end
  end
end
return out
"""
)
