//! The Lua scripts that are the only writers of a session's keys: one atomic round trip each.
//!
//! Every script gets the session's four keys (see `keys.rs`) and starts with `PRELUDE`.
//! Times come from the Redis server's clock (`TIME`), so every sidecar replica agrees.
//! Replies are arrays whose first element says what happened: `OK`, `VERSION` (with the
//! actual version), `NOTFOUND` or `DUP` (a remembered request id).
//!
//! A message is stored as `{"r":ROLE,"s":SEQ,"t":MS,"m":BODY}`, built by concatenation so
//! the body is never parsed by Lua; the role comes first so the tool-safe window can spot
//! tool results with a prefix comparison.

use redis::Script;
use std::sync::LazyLock;

const PRELUDE: &str = r#"
local meta, msgs, reqs, state = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The live session's version, or 0 when it is absent or expired (then its keys go).
local function current_version(now)
  local v = redis.call('HMGET', meta, 'version', 'expire')
  if not v[1] then return 0 end
  if tonumber(v[2]) <= now then
    redis.call('DEL', meta, msgs, reqs, state)
    return 0
  end
  return tonumber(v[1])
end

local function mismatch(expected, version)
  return expected ~= '' and tonumber(expected) ~= version
end

local function element(role, seq, now, body)
  return '{"r":"' .. role .. '","s":' .. string.format('%d', seq) .. ',"t":' ..
    string.format('%d', now) .. ',"m":' .. body .. '}'
end

-- Pushes role, time, body triples from ARGV[from] on as messages first_seq,
-- first_seq + 1, ...; an empty time (a new message) is now, a copy keeps its own.
local function push_messages(from, first_seq, now)
  local batch, seq = {}, first_seq
  for i = from, #ARGV, 3 do
    batch[#batch + 1] = element(ARGV[i], seq, tonumber(ARGV[i + 1]) or now, ARGV[i + 2])
    seq = seq + 1
    if #batch == 500 then
      redis.call('RPUSH', msgs, unpack(batch))
      batch = {}
    end
  end
  if #batch > 0 then redis.call('RPUSH', msgs, unpack(batch)) end
  return seq - first_seq
end

-- The provider usage of the session's messages, added up: six counters in the meta hash,
-- in the order of UsageTotal::counters.
local USAGE = {'usage:prompt_tokens', 'usage:completion_tokens', 'usage:total_tokens',
  'usage:cached_tokens', 'usage:reasoning_tokens', 'usage:cache_miss_tokens'}

-- Adds the six counters from ARGV[from] on to the session's (or, with reset, sets them).
local function count_usage(from, reset)
  for i, field in ipairs(USAGE) do
    local n = ARGV[from + i - 1]
    if reset then
      redis.call('HSET', meta, field, n)
    elseif n ~= '0' then
      redis.call('HINCRBY', meta, field, n)
    end
  end
end

local function usage()
  return redis.call('HMGET', meta, unpack(USAGE))
end

-- Records a write: next version, times, and the same expiry on every key.
local function commit(now, ttl, version)
  local expire = now + tonumber(ttl)
  if version == 0 then redis.call('HSET', meta, 'created', string.format('%d', now)) end
  redis.call('HSET', meta, 'version', version + 1, 'updated', string.format('%d', now),
    'expire', string.format('%d', expire))
  for _, key in ipairs(KEYS) do redis.call('PEXPIREAT', key, expire) end
  return expire
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

/// ARGV: ttl_ms, expected_version|'', request_id|'', the six usage counters of the
/// messages, then role, time|'', body triples. Reply: OK|DUP, "first count version expire".
pub static APPEND: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local version = current_version(now)
local request_id = ARGV[3]
if request_id ~= '' and version > 0 then
  for _, entry in ipairs(redis.call('LRANGE', reqs, 0, -1)) do
    local cut = string.find(entry, '\n', 1, true)
    if string.sub(entry, 1, cut - 1) == request_id then
      return {'DUP', string.sub(entry, cut + 1)}
    end
  end
end
if mismatch(ARGV[2], version) then return {'VERSION', version} end
local first = redis.call('LLEN', msgs) + 1
local count = push_messages(10, first, now)
count_usage(4, false)
local outcome = string.format('%d %d %d %d', first, count, version + 1, now + tonumber(ARGV[1]))
if request_id ~= '' then
  redis.call('LPUSH', reqs, request_id .. '\n' .. outcome)
  redis.call('LTRIM', reqs, 0, 63)
end
commit(now, ARGV[1], version)
return {'OK', outcome}
"#,
    )
});

/// ARGV: ttl_ms, expected_version|'', the six usage counters of the messages, then role,
/// time|'', body triples. Reply: OK, version, expire.
pub static REPLACE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local version = current_version(now)
if mismatch(ARGV[2], version) then return {'VERSION', version} end
redis.call('DEL', msgs)
push_messages(9, 1, now)
count_usage(3, true)
local expire = commit(now, ARGV[1], version)
return {'OK', version + 1, expire}
"#,
    )
});

/// ARGV: ttl_ms, expected_version|'', then role, time|'', body triples. Reply: OK, version, expire.
pub static SET_SYSTEM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local version = current_version(now)
if mismatch(ARGV[2], version) then return {'VERSION', version} end
local elements = {}
for i = 3, #ARGV, 3 do
  elements[#elements + 1] = element(ARGV[i], #elements + 1, tonumber(ARGV[i + 1]) or now, ARGV[i + 2])
end
redis.call('HSET', meta, 'system', '[' .. table.concat(elements, ',') .. ']')
local expire = commit(now, ARGV[1], version)
return {'OK', version + 1, expire}
"#,
    )
});

/// ARGV: ttl_ms, expected_version|'', 'replace'|'merge', then key, JSON value pairs (an
/// empty value removes the key). Reply: OK, version, expire, HGETALL of the state.
pub static UPDATE_STATE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local version = current_version(now)
if mismatch(ARGV[2], version) then return {'VERSION', version} end
if ARGV[3] == 'replace' then redis.call('DEL', state) end
for i = 4, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', state, ARGV[i])
  else
    redis.call('HSET', state, ARGV[i], ARGV[i + 1])
  end
end
local expire = commit(now, ARGV[1], version)
return {'OK', version + 1, expire, redis.call('HGETALL', state)}
"#,
    )
});

/// ARGV: ttl_ms. Reply: OK, version, expire | NOTFOUND.
pub static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local version = current_version(now)
if version == 0 then return {'NOTFOUND'} end
local expire = now + tonumber(ARGV[1])
redis.call('HSET', meta, 'expire', string.format('%d', expire))
for _, key in ipairs(KEYS) do redis.call('PEXPIREAT', key, expire) end
return {'OK', version, expire}
"#,
    )
});

/// ARGV: expected_version|''. Reply: OK, 1 if a live session was deleted else 0.
pub static DELETE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local version = current_version(now_ms())
if mismatch(ARGV[1], version) then return {'VERSION', version} end
if version == 0 then return {'OK', 0} end
redis.call('DEL', meta, msgs, reqs, state)
return {'OK', 1}
"#,
    )
});

/// ARGV: 'all' | 'last' N MAX_GROWTH | 'after' SEQ.
/// Reply: OK, version, created, updated, expire, system, message_count, state, messages,
/// usage counters.
pub static GET: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now = now_ms()
local m = redis.call('HMGET', meta, 'version', 'expire', 'created', 'updated', 'system')
if not m[1] or tonumber(m[2]) <= now then return {'NOTFOUND'} end
local len = redis.call('LLEN', msgs)
local start = 0
if ARGV[1] == 'last' then
  local plain = math.max(len - tonumber(ARGV[2]), 0)
  local is_tool = function(i)
    return string.sub(redis.call('LINDEX', msgs, i - len), 1, 11) == '{"r":"tool"'
  end
  start = plain
  -- Tool-safe: never start with tool results cut off from their assistant message.
  -- Negative indexes walk from the tail, so this costs O(window), not O(session), and
  -- the growth is bounded (ARGV[3], model::MAX_WINDOW_GROWTH): results further from
  -- their call are left out, the window starting after them.
  while start > 0 and start < len and is_tool(start) do
    if plain - start >= tonumber(ARGV[3]) then
      start = plain
      while start < len and is_tool(start) do start = start + 1 end
      break
    end
    start = start - 1
  end
elseif ARGV[1] == 'after' then
  start = math.min(tonumber(ARGV[2]), len)
end
local list = {}
if start < len then list = redis.call('LRANGE', msgs, start - len, -1) end
return {'OK', m[1], m[3], m[4], m[2], m[5] or '[]', len, redis.call('HGETALL', state), list,
  usage()}
"#,
    )
});

/// No ARGV. Reply: OK, version, updated, expire, message_count, usage counters | NOTFOUND.
pub static SUMMARY: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local m = redis.call('HMGET', meta, 'version', 'updated', 'expire')
if not m[1] or tonumber(m[3]) <= now_ms() then return {'NOTFOUND'} end
return {'OK', m[1], m[2], m[3], redis.call('LLEN', msgs), usage()}
"#,
    )
});
