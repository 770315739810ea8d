//! `[[consumers]]`: the asynchronous consumers, with Centrifugo's names. Each entry names
//! its kind (`type`) and carries the settings of that kind in a table of the same name
//! (`[consumers.postgresql]`, `[consumers.nats_jetstream]`).

use hubbub_core::duration::serde_human;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerKind {
    Postgresql,
    NatsJetstream,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Unique among the consumers; part of the durable state kept for it (the state row in
    /// the outbox's database, the tag on what it publishes), so renaming one starts it anew.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ConsumerKind,
    /// Only enabled consumers run (as in Centrifugo, a disabled one is still validated).
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub postgresql: PostgresConsumerConfig,
    #[serde(default)]
    pub nats_jetstream: NatsJetStreamConsumerConfig,
}

/// An outbox table in the application's PostgreSQL database (see docs/DEPLOY.md for its DDL).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConsumerConfig {
    /// `postgres://user:password@host:port/database` of the application's database.
    pub dsn: String,
    /// The outbox table (`name` or `schema.name`): columns `id` (bigserial), `method`
    /// (text), `payload` (json/jsonb/text), `partition` (integer).
    pub outbox_table_name: String,
    /// Partitions consumed in parallel (rows with `partition` in 0..num_partitions); each
    /// is processed by one node at a time, in id order.
    pub num_partitions: u32,
    /// Rows read per partition per round.
    pub partition_select_limit: u32,
    /// How often an idle partition is read again.
    #[serde(with = "serde_human")]
    pub partition_poll_interval: Duration,
    /// When set, Hubbub also LISTENs on this channel: a NOTIFY whose payload is a partition
    /// number wakes that partition at once (a trigger on the table can send it).
    pub partition_notification_channel: String,
}

impl Default for PostgresConsumerConfig {
    fn default() -> Self {
        PostgresConsumerConfig {
            dsn: String::new(),
            outbox_table_name: String::new(),
            num_partitions: 1,
            partition_select_limit: 100,
            partition_poll_interval: Duration::from_millis(300),
            partition_notification_channel: String::new(),
        }
    }
}

/// A durable pull consumer on a NATS JetStream stream the application publishes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsJetStreamConsumerConfig {
    pub url: String,
    /// The stream; it must exist (the application owns it).
    pub stream_name: String,
    /// The subject filter of the consumer (at most one; wildcards allowed); empty: the
    /// whole stream.
    pub subjects: Vec<String>,
    /// The durable consumer, created if absent; every node uses the same one.
    pub durable_consumer_name: String,
    /// When set, the method is read from this header and the message body is the payload;
    /// otherwise the body is `{"method": .., "payload": {..}}`.
    pub method_header: String,
    /// How long a delivered message may stay unacknowledged before JetStream delivers it
    /// again (to this node or another).
    #[serde(with = "serde_human")]
    pub ack_wait: Duration,
}

impl Default for NatsJetStreamConsumerConfig {
    fn default() -> Self {
        NatsJetStreamConsumerConfig {
            url: "nats://127.0.0.1:4222".into(),
            stream_name: String::new(),
            subjects: Vec::new(),
            durable_consumer_name: String::new(),
            method_header: String::new(),
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// Checks every consumer; the error names the key (`consumers[1].postgresql.dsn`).
pub fn validate(consumers: &[ConsumerConfig]) -> Result<(), (String, String)> {
    for (i, c) in consumers.iter().enumerate() {
        let key = |k: &str| format!("consumers[{i}].{k}");
        let bad = |k: &str, m: &str| Err((key(k), m.to_owned()));
        if c.name.is_empty() || !c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
        {
            return bad("name", "must be letters, digits, '_' or '-'");
        }
        if consumers[..i].iter().any(|o| o.name == c.name) {
            return bad("name", &format!("{:?} is used by another consumer", c.name));
        }
        match c.kind {
            ConsumerKind::Postgresql => {
                let p = &c.postgresql;
                if !["postgres://", "postgresql://"].iter().any(|s| p.dsn.starts_with(s)) {
                    return bad("postgresql.dsn", "must be a postgres:// (or postgresql://) URL");
                }
                if !is_table_name(&p.outbox_table_name) {
                    return bad(
                        "postgresql.outbox_table_name",
                        "must be a table name like \"outbox\" or \"app.outbox\" (letters, digits, '_')",
                    );
                }
                if !(1..=1024).contains(&p.num_partitions) {
                    return bad("postgresql.num_partitions", "must be between 1 and 1024");
                }
                if !(1..=10_000).contains(&p.partition_select_limit) {
                    return bad("postgresql.partition_select_limit", "must be between 1 and 10000");
                }
                if p.partition_poll_interval < Duration::from_millis(10) {
                    return bad("postgresql.partition_poll_interval", "must be at least 10ms");
                }
                if !p.partition_notification_channel.is_empty()
                    && !is_identifier(&p.partition_notification_channel)
                {
                    return bad(
                        "postgresql.partition_notification_channel",
                        "must be letters, digits and '_', not starting with a digit",
                    );
                }
            }
            ConsumerKind::NatsJetstream => {
                let n = &c.nats_jetstream;
                if n.url.is_empty() || n.url.chars().any(char::is_whitespace) {
                    return bad("nats_jetstream.url", "expected an address like \"nats://127.0.0.1:4222\"");
                }
                if !is_nats_name(&n.stream_name) {
                    return bad(
                        "nats_jetstream.stream_name",
                        "must be a stream name (no spaces, '.', '*', '>')",
                    );
                }
                if !is_nats_name(&n.durable_consumer_name) {
                    return bad(
                        "nats_jetstream.durable_consumer_name",
                        "must be a consumer name (no spaces, '.', '*', '>')",
                    );
                }
                if n.subjects.iter().any(|s| s.is_empty() || s.chars().any(char::is_whitespace)) {
                    return bad("nats_jetstream.subjects", "subjects may not be empty or hold spaces");
                }
                if n.subjects.len() > 1 {
                    return bad(
                        "nats_jetstream.subjects",
                        "at most one subject filter (a wildcard like \"outbox.>\" covers several)",
                    );
                }
                if n.ack_wait < Duration::from_secs(1) {
                    return bad("nats_jetstream.ack_wait", "must be at least 1s");
                }
            }
        }
    }
    Ok(())
}

fn is_identifier(s: &str) -> bool {
    s.len() <= 63
        && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `table` or `schema.table`, each an unquoted identifier: the name goes into SQL as is.
fn is_table_name(s: &str) -> bool {
    let mut parts = s.split('.');
    let ok = parts.next().is_some_and(is_identifier);
    match (parts.next(), parts.next()) {
        (None, _) => ok,
        (Some(table), None) => ok && is_identifier(table),
        _ => false,
    }
}

fn is_nats_name(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_table_name("outbox") && is_table_name("app.outbox_1"));
        assert!(!is_table_name("a.b.c") && !is_table_name("x; drop table y") && !is_table_name(""));
        assert!(!is_table_name("1abc") && !is_table_name("a."));
        assert!(is_nats_name("OUTBOX") && !is_nats_name("a.b") && !is_nats_name(""));
    }
}
