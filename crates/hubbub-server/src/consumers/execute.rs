//! Executes one consumed entry: a server API method and its JSON payload, through the same
//! operation `POST /api/<method>` runs ([`crate::api::execute`]).
//!
//! Exactly once (see ARCHITECTURE.md, "Async consumers"): every publication an entry makes
//! carries the tag [`ENTRY_TAG`] = `<consumer>:<entry id>`, kept in history with it. An entry
//! that a previous attempt may already have executed (the consumer's durable state says it
//! was claimed or delivered before) is first looked for in each target channel's history:
//! channels that already have it are not published to again.

use crate::api::{self, ApiAnswer};
use hubbub_core::engine::HistoryQuery;
use hubbub_core::Node;
use hubbub_protocol::codes::ERROR_INTERNAL;
use hubbub_protocol::{ProtocolError, StreamPosition};
use serde_json::Value;

/// The tag that marks a publication made by a consumer: `<consumer name>:<entry id>`.
pub const ENTRY_TAG: &str = "hubbub-entry";

/// What became of an entry.
#[derive(Debug)]
pub enum Outcome {
    /// Executed now, or found already executed: the entry is done.
    Done,
    /// It can never be executed (bad JSON, unknown method, refused by the method): logged
    /// and skipped, so it never blocks what comes after it.
    Skipped(String),
    /// A temporary failure (the engine is unavailable): the same entry is tried again, and
    /// nothing after it runs before it does.
    Retry(String),
}

/// One entry of a consumer.
pub struct Entry<'a> {
    /// `<consumer name>:<entry id>`: the value of [`ENTRY_TAG`].
    pub key: String,
    pub method: &'a str,
    pub payload: &'a [u8],
    /// A previous attempt may have executed it (claimed, delivered before): check history
    /// before publishing.
    pub maybe_done: bool,
}

/// Whether the server API's error is temporary (retry) rather than a refusal (skip): as in
/// Centrifugo, internal errors are retried.
fn is_temporary(error: &ProtocolError) -> bool {
    error.code == ERROR_INTERNAL.code || error.temporary
}

pub async fn execute(node: &std::sync::Arc<Node>, entry: Entry<'_>) -> Outcome {
    let mut payload: Value = match serde_json::from_slice(entry.payload) {
        Ok(Value::String(text)) => match serde_json::from_str(&text) {
            // A payload stored as a JSON string holding the request (a `text` column, some
            // CDC tools): read what it holds, as Centrifugo does.
            Ok(inner) => inner,
            Err(e) => return Outcome::Skipped(format!("payload is a string that is not JSON: {e}")),
        },
        Ok(value) => value,
        Err(e) => return Outcome::Skipped(format!("payload is not JSON: {e}")),
    };
    let Some(request) = payload.as_object_mut() else {
        return Outcome::Skipped("payload is not a JSON object".into());
    };
    let publishes = matches!(entry.method, "publish" | "broadcast");
    if publishes {
        let tags = request.entry("tags").or_insert_with(|| Value::Object(Default::default()));
        let Some(tags) = tags.as_object_mut() else {
            return Outcome::Skipped("payload.tags is not an object".into());
        };
        tags.insert(ENTRY_TAG.into(), Value::String(entry.key.clone()));
    }
    if publishes && entry.maybe_done {
        match remaining_channels(node, entry.method, request, &entry.key).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(entry = %entry.key, "consumed entry was already published: not again");
                return Outcome::Done;
            }
            Err(e) => return Outcome::Retry(format!("reading history to check the entry: {e}")),
        }
    }
    let body = match serde_json::to_vec(&payload) {
        Ok(body) => body,
        Err(e) => return Outcome::Skipped(format!("payload cannot be encoded: {e}")),
    };
    match api::execute(node, entry.method, &body).await {
        Ok(ApiAnswer::Json(answer)) if entry.method == "broadcast" => {
            // Each channel answers on its own; one that failed for a temporary reason makes
            // the entry retried (those that succeeded are then found in their history).
            let responses = answer["responses"].as_array().cloned().unwrap_or_default();
            let temporary = responses.iter().find_map(|r| {
                let error = r.get("error")?;
                let internal = error["code"].as_u64() == Some(u64::from(ERROR_INTERNAL.code));
                (internal || error["temporary"] == true).then(|| error["message"].to_string())
            });
            match temporary {
                Some(message) => Outcome::Retry(format!("broadcast: {message}")),
                None => Outcome::Done,
            }
        }
        Ok(_) => Outcome::Done,
        Err(e) if is_temporary(e.error()) => Outcome::Retry(e.error().message.clone()),
        Err(e) => Outcome::Skipped(format!("{} (code {})", e.error().message, e.error().code)),
    }
}

/// For an entry that may already be done: drops from the request the channels whose history
/// already holds a publication tagged `key`. `Ok(false)`: none is left.
async fn remaining_channels(
    node: &Node,
    method: &str,
    request: &mut serde_json::Map<String, Value>,
    key: &str,
) -> Result<bool, hubbub_core::engine::EngineError> {
    if method == "publish" {
        let Some(channel) = request.get("channel").and_then(Value::as_str) else { return Ok(true) };
        return Ok(!published(node, channel, key).await?);
    }
    let Some(channels) = request.get_mut("channels").and_then(Value::as_array_mut) else {
        return Ok(true);
    };
    let mut left = Vec::with_capacity(channels.len());
    for channel in channels.drain(..) {
        let done = match channel.as_str() {
            Some(name) => published(node, name, key).await?,
            None => false,
        };
        if !done {
            left.push(channel);
        }
    }
    let any = !left.is_empty();
    *channels = left;
    Ok(any)
}

/// Whether `channel`'s history holds a publication tagged `key`. Read oldest first, in
/// answers bounded like any other; a channel without history cannot tell (false: the entry
/// is published again, at least once).
async fn published(node: &Node, channel: &str, key: &str) -> Result<bool, hubbub_core::engine::EngineError> {
    let Ok((ns, _)) = node.namespaces.resolve(channel) else { return Ok(false) };
    if !node.has_stream(ns) {
        return Ok(false);
    }
    let mut since: Option<StreamPosition> = None;
    loop {
        let query = HistoryQuery {
            since: since.clone(),
            limit: None,
            reverse: false,
            max_bytes: Some(node.client.answer_bytes()),
        };
        let page = node.read_stream(channel, ns, query).await?;
        if page
            .publications
            .iter()
            .any(|p| p.tags.as_ref().and_then(|t| t.get(ENTRY_TAG)).is_some_and(|k| k == key))
        {
            return Ok(true);
        }
        match page.publications.last() {
            Some(last) if last.offset < page.position.offset && last.offset > 0 => {
                since = Some(StreamPosition { offset: last.offset, epoch: page.position.epoch.clone() });
            }
            _ => return Ok(false),
        }
    }
}
