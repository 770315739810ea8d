//! The Lua scripts the engine runs in Redis. Each runs atomically: no other command or
//! script interleaves, which is what makes offsets unique and fan-out ordered across nodes.
//!
//! A channel's stream is a Redis STREAM whose entry ids are `<offset>-0` (so a range read
//! `since` an offset is one XRANGE), with one field `d`: the publication's JSON without its
//! offset. Beside it, the meta hash keeps the epoch (`e`) and the top offset (`s`).

use redis::Script;

/// Publishes with history: creates the meta (with the epoch given) when missing, takes the
/// next offset, appends to the stream (trimmed to the history size), refreshes both TTLs and
/// PUBLISHes the framed publication (`p<offset> <json>`).
///
/// KEYS: stream, meta. ARGV: publication JSON, history size, stream TTL (ms), meta TTL (ms),
/// epoch for a new meta, PUB/SUB topic. Returns `{offset, epoch}`.
const PUBLISH: &str = r#"
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('hset', KEYS[2], 'e', epoch)
  redis.call('del', KEYS[1])
end
local top = redis.call('hincrby', KEYS[2], 's', 1)
redis.call('pexpire', KEYS[2], ARGV[4])
redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], string.format('%d-0', top), 'd', ARGV[1])
redis.call('pexpire', KEYS[1], ARGV[3])
redis.call('publish', ARGV[6], string.format('p%d ', top) .. ARGV[1])
return {top, epoch}
"#;

/// Reads the position and, optionally, one batch of a channel's stream. A channel without a
/// meta gets one (offset 0, the epoch given, the meta TTL) when an epoch is given: the
/// "empty epoch" a positioned subscriber of the empty channel holds, which the first
/// publication then keeps.
///
/// KEYS: stream, meta. ARGV: epoch for a new meta (or ''), meta TTL (ms), '1' for newest
/// first, after (exclusive offset), up to (inclusive offset, '' for the top), count (0 for
/// the position only). Returns `{epoch, top, first kept offset, id1, json1, id2, json2...}`
/// (epoch '' when the channel has no meta and none was made).
const HISTORY: &str = r#"
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  if ARGV[1] == '' then return {'', 0, 1} end
  redis.call('hset', KEYS[2], 'e', ARGV[1])
  redis.call('pexpire', KEYS[2], ARGV[2])
  return {ARGV[1], 0, 1}
end
local top = tonumber(redis.call('hget', KEYS[2], 's') or '0')
local first = top + 1
local head = redis.call('xrange', KEYS[1], '-', '+', 'COUNT', 1)
if head[1] then first = tonumber(string.match(head[1][1], '^%d+')) end
local out = {epoch, top, first}
local count = tonumber(ARGV[6])
if count > 0 then
  local upto = top
  if ARGV[5] ~= '' then upto = math.min(top, tonumber(ARGV[5])) end
  local after = tonumber(ARGV[4])
  if upto > after then
    local entries
    if ARGV[3] == '1' then
      entries = redis.call('xrevrange', KEYS[1], string.format('%d-0', upto), string.format('%d-0', after + 1), 'COUNT', count)
    else
      entries = redis.call('xrange', KEYS[1], string.format('%d-0', after + 1), string.format('%d-0', upto), 'COUNT', count)
    end
    for _, e in ipairs(entries) do
      out[#out + 1] = e[1]
      out[#out + 1] = e[2][2]
    end
  end
end
return out
"#;

/// Now in milliseconds by the Redis server's clock (one clock for every node), after
/// switching to effects replication where the server still needs it (Redis < 5).
const NOW: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#;

/// Adds or refreshes presence entries: each expires `ttl` after now unless refreshed again.
///
/// KEYS: hash (client -> info), sorted set (client -> expiry ms). ARGV: TTL (ms), then
/// client, info pairs.
const PRESENCE_ADD: &str = r#"
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  redis.call('zadd', KEYS[2], now + ttl, ARGV[i])
  redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('pexpire', KEYS[1], ttl)
redis.call('pexpire', KEYS[2], ttl)
return 1
"#;

/// Drops the expired entries, then returns the rest: `HGETALL` (ARGV[1] = 'all') or only
/// the infos (`HVALS`).
///
/// KEYS: hash, sorted set.
const PRESENCE_GET: &str = r#"
local gone = redis.call('zrangebyscore', KEYS[2], '-inf', now)
if #gone > 0 then
  redis.call('zremrangebyscore', KEYS[2], '-inf', now)
  for i = 1, #gone, 1000 do
    redis.call('hdel', KEYS[1], unpack(gone, i, math.min(i + 999, #gone)))
  end
end
if ARGV[1] == 'all' then return redis.call('hgetall', KEYS[1]) end
return redis.call('hvals', KEYS[1])
"#;

/// The engine's scripts, loaded once (EVALSHA, falling back to EVAL+load when the server
/// does not know a script, e.g. after a restart).
pub struct Scripts {
    pub publish: Script,
    pub history: Script,
    pub presence_add: Script,
    pub presence_get: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            publish: Script::new(PUBLISH),
            history: Script::new(HISTORY),
            presence_add: Script::new(&format!("{NOW}{PRESENCE_ADD}")),
            presence_get: Script::new(&format!("{NOW}{PRESENCE_GET}")),
        }
    }
}

impl Scripts {
    pub fn all(&self) -> [&Script; 4] {
        [&self.publish, &self.history, &self.presence_add, &self.presence_get]
    }
}
