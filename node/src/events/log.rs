//! The per-topic event log in Redis: every event gets the next offset of its topic, is kept in
//! a bounded stream for recovery and is published for live delivery — all in one script, so
//! offsets have no gaps and no two events share one, whichever node publishes.
//!
//! Layout (keys from [`RedisKeys`]): `events:offsets:<topic>` is a hash with `epoch` and `seq`;
//! `events:history:<topic>` a stream whose entry ids are `<seq>-0` with one field `e` holding
//! the envelope JSON; `events:<topic>` the pub/sub channel, whose messages are
//! `<epoch> <seq> <envelope JSON>`. When the offsets hash is gone (Redis lost its data, or the
//! topic was idle past `realtime.history_ttl_secs`) the next event starts a new epoch with an
//! empty history, so an offset of the old epoch can never be mistaken for one of the new.
//!
//! Events relayed from the PostgreSQL outbox ([`crate::outbox`]) carry their outbox number;
//! the offsets hash remembers the last one applied (field `outbox`) and the script skips any
//! number at or below it. A relay that appended an event but died (or timed out) before it
//! could mark the row delivered therefore replays it harmlessly: each outbox row is appended
//! exactly once. The mark lives in the topic's own hash, so the check stays one atomic script
//! on the topic's keys (one shard in a Redis Cluster, where the channel is sharded too and the
//! script publishes with `SPUBLISH`).
//!
//! **Failover.** Redis replicates asynchronously: a replica promoted after its master died may
//! lack the last events the master acknowledged, and would hand their offsets out again to
//! different events — a silent gap for anyone who saw the first ones. The offsets hash
//! therefore records the replication id (`master_replid`) of the Redis that wrote it; a Redis
//! with another id (a promoted replica gets a new one, as does a restarted server) starts a
//! new epoch on the next append, and reads refuse to replay the old one
//! ([`Missed::Lost`]), so a client resuming across a failover gets `recovered: false` rather
//! than a history with a hole in it.

use std::{fmt, str::FromStr, sync::Arc};

use petmesh_shared::{event::EventEnvelope, registry::RedisKeys};

use crate::config::Redis;

/// The replication id of the Redis running the script (Lua; see the module doc).
const REPLID: &str = r"
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
";

/// Assigns the next offset, appends to the history and publishes (see the module doc).
/// KEYS: offsets hash, history stream. ARGV: channel, envelope JSON, history length, epoch
/// to start if there is none (or it was written by another Redis), TTL in seconds, outbox
/// number (empty for events published directly), publish command (`PUBLISH`, or `SPUBLISH`
/// in a Redis Cluster). Returns nil, appending nothing, for an outbox number already applied.
const APPEND: &str = r"
local relayed = tonumber(ARGV[6])
if relayed and relayed <= tonumber(redis.call('HGET', KEYS[1], 'outbox') or '0') then
  return false
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch and redis.call('HGET', KEYS[1], 'replid') ~= replid then
  epoch = false
end
if not epoch then
  epoch = ARGV[4]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0, 'replid', replid)
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'e', ARGV[2])
if relayed then
  redis.call('HSET', KEYS[1], 'outbox', relayed)
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call(ARGV[7], ARGV[1], epoch .. ' ' .. seq .. ' ' .. ARGV[2])
return {epoch, seq}
";

/// Reads a topic's offsets and a range of its history at once. KEYS: offsets hash, history
/// stream. ARGV: first and last stream id. Returns `{epoch, seq, entries, stale}`, `stale` 1
/// when the offsets were written by another Redis (see the module doc).
const READ: &str = r"
local offsets = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'replid')
local stale = 0
if offsets[1] and offsets[3] ~= replid then stale = 1 end
return {offsets[1], offsets[2], redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[2]), stale}
";

/// What [`READ`] returns.
type ReadReply = (Option<String>, Option<u64>, Vec<HistoryEntry>, u8);

/// One `XRANGE` entry: id and flat field/value list.
type HistoryEntry = (String, Vec<String>);

/// A position in a topic's history: `<epoch>:<seq>` on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offset {
    /// The history this offset belongs to.
    pub epoch: Arc<str>,
    /// The event's number in that history, from 1.
    pub seq: u64,
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}

impl FromStr for Offset {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (epoch, seq) = s
            .rsplit_once(':')
            .ok_or("an offset looks like <epoch>:<number>")?;
        let valid_epoch = !epoch.is_empty()
            && epoch.len() <= 32
            && epoch.bytes().all(|b| b.is_ascii_alphanumeric());
        if !valid_epoch {
            return Err("an offset looks like <epoch>:<number>");
        }
        let seq = seq
            .parse()
            .map_err(|_| "an offset looks like <epoch>:<number>")?;
        Ok(Self {
            epoch: epoch.into(),
            seq,
        })
    }
}

/// One event of a topic with its offset.
#[derive(Debug, Clone)]
pub struct LoggedEvent {
    /// Where it is in its topic's history.
    pub offset: Offset,
    /// The event.
    pub envelope: EventEnvelope,
}

impl LoggedEvent {
    /// Decodes a pub/sub message (`<epoch> <seq> <envelope JSON>`).
    pub fn from_message(message: &str) -> Option<Self> {
        let (epoch, rest) = message.split_once(' ')?;
        let (seq, json) = rest.split_once(' ')?;
        Some(Self {
            offset: Offset {
                epoch: epoch.into(),
                seq: seq.parse().ok()?,
            },
            envelope: serde_json::from_str(json).ok()?,
        })
    }
}

/// What a topic's history holds after an offset.
#[derive(Debug)]
pub enum Missed {
    /// Every event after the offset, in order (possibly none).
    Events(Vec<LoggedEvent>),
    /// The history no longer reaches back to the offset; nothing is replayed.
    Lost(&'static str),
}

/// Reads and appends to the per-topic logs.
#[derive(Clone)]
pub struct EventLog {
    redis: Redis,
    keys: RedisKeys,
    append: Arc<redis::Script>,
    read: Arc<redis::Script>,
    /// `PUBLISH`, or `SPUBLISH` when channels are sharded.
    publish: &'static str,
    history_len: u64,
    ttl_secs: u64,
}

impl EventLog {
    /// A log over `redis` keeping `history_len` events per topic for `ttl_secs` after the last;
    /// `sharded` publishes with `SPUBLISH` (a Redis Cluster).
    pub fn new(
        redis: Redis,
        keys: RedisKeys,
        sharded: bool,
        history_len: u64,
        ttl_secs: u64,
    ) -> Self {
        Self {
            redis,
            keys,
            append: Arc::new(redis::Script::new(&format!("{REPLID}{APPEND}"))),
            read: Arc::new(redis::Script::new(&format!("{REPLID}{READ}"))),
            publish: if sharded { "SPUBLISH" } else { "PUBLISH" },
            history_len,
            ttl_secs,
        }
    }

    /// Appends `envelope` to its topic and publishes it; returns its offset.
    pub async fn append(&self, envelope: &EventEnvelope) -> anyhow::Result<Offset> {
        self.invoke(envelope, None)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the append script skipped a direct event"))
    }

    /// Appends outbox row `seq` of `envelope`'s topic unless it was appended before; returns
    /// its offset, `None` when skipped as a replay.
    pub async fn append_relayed(
        &self,
        envelope: &EventEnvelope,
        seq: u64,
    ) -> anyhow::Result<Option<Offset>> {
        self.invoke(envelope, Some(seq)).await
    }

    async fn invoke(
        &self,
        envelope: &EventEnvelope,
        outbox_seq: Option<u64>,
    ) -> anyhow::Result<Option<Offset>> {
        let topic = &envelope.topic;
        let json = serde_json::to_string(envelope)?;
        let new_epoch = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let mut conn = self.redis.clone();
        let appended: Option<(String, u64)> = self
            .append
            .key(self.keys.topic_offsets(topic))
            .key(self.keys.topic_history(topic))
            .arg(self.keys.event_channel(topic))
            .arg(json)
            .arg(self.history_len)
            .arg(new_epoch)
            .arg(self.ttl_secs)
            .arg(outbox_seq.map(|seq| seq.to_string()).unwrap_or_default())
            .arg(self.publish)
            .invoke_async(&mut conn)
            .await?;
        Ok(appended.map(|(epoch, seq)| Offset {
            epoch: epoch.into(),
            seq,
        }))
    }

    /// The offset of the last event of `topic`, `None` when it has no history.
    pub async fn current(&self, topic: &str) -> anyhow::Result<Option<Offset>> {
        let mut conn = self.redis.clone();
        let (epoch, seq): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.keys.topic_offsets(topic))
            .arg("epoch")
            .arg("seq")
            .query_async(&mut conn)
            .await?;
        Ok(epoch.zip(seq).map(|(epoch, seq)| Offset {
            epoch: epoch.into(),
            seq,
        }))
    }

    /// The events of `topic` after `after` up to `until` (inclusive; `None` = the end), or why
    /// they cannot all be had. Never a partial answer: either every event in the range, in
    /// order, or [`Missed::Lost`].
    pub async fn after(
        &self,
        topic: &str,
        after: &Offset,
        until: Option<u64>,
    ) -> anyhow::Result<Missed> {
        let mut conn = self.redis.clone();
        let end = until.map_or_else(|| "+".to_owned(), |seq| format!("{seq}-0"));
        let (epoch, seq, entries, stale): ReadReply = self
            .read
            .key(self.keys.topic_offsets(topic))
            .key(self.keys.topic_history(topic))
            .arg(format!("{}-0", after.seq + 1))
            .arg(end)
            .invoke_async(&mut conn)
            .await?;
        let (Some(epoch), Some(current)) = (epoch, seq) else {
            return Ok(Missed::Lost("the topic's history has expired"));
        };
        if stale == 1 {
            return Ok(Missed::Lost(
                "Redis failed over or restarted: the history may have lost events",
            ));
        }
        if *epoch != *after.epoch {
            return Ok(Missed::Lost("the topic's history was reset"));
        }
        if after.seq > current {
            return Ok(Missed::Lost("the offset is ahead of the topic's history"));
        }
        let mut events = Vec::with_capacity(entries.len());
        let mut expected = after.seq + 1;
        for (id, fields) in entries {
            let seq = id
                .split_once('-')
                .and_then(|(seq, _)| seq.parse::<u64>().ok());
            if seq != Some(expected) {
                return Ok(Missed::Lost(
                    "the topic's history no longer reaches back to the offset",
                ));
            }
            let Some(json) = fields.chunks(2).find(|kv| kv[0] == "e").map(|kv| &kv[1]) else {
                anyhow::bail!("history entry {id} of {topic} has no event");
            };
            events.push(LoggedEvent {
                offset: Offset {
                    epoch: epoch.as_str().into(),
                    seq: expected,
                },
                envelope: serde_json::from_str(json)?,
            });
            expected += 1;
        }
        let wanted_end = until.unwrap_or(current).min(current);
        if after.seq < wanted_end && expected <= wanted_end {
            return Ok(Missed::Lost(
                "the topic's history no longer reaches back to the offset",
            ));
        }
        Ok(Missed::Events(events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_and_reject_garbage() {
        let offset: Offset = "a1b2c3:42".parse().unwrap();
        assert_eq!(offset.seq, 42);
        assert_eq!(&*offset.epoch, "a1b2c3");
        assert_eq!(offset.to_string(), "a1b2c3:42");
        for bad in ["", "42", ":42", "abc:", "abc:-1", "a b:1", "abc:x"] {
            assert!(bad.parse::<Offset>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn published_messages_decode() {
        let message = r#"ep1 7 {"event":"pet:created","topic":"pets","payload":{"id":1},"timestamp":5,"nodeId":"n"}"#;
        let logged = LoggedEvent::from_message(message).unwrap();
        assert_eq!(logged.offset.to_string(), "ep1:7");
        assert_eq!(logged.envelope.event, "pet:created");
        assert!(LoggedEvent::from_message("ep1 x {}").is_none());
    }
}
