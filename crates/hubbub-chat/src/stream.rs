//! Where the chat meets the real-time core: the `room` namespace's hooks (only members
//! subscribe; history and recovery come from the store's event log), the ordered
//! publication of stored events, and presence (online / offline / last seen).

use crate::order::Sequencer;
use crate::{now_millis, room_channel, Chat, ROOM_NAMESPACE};
use async_trait::async_trait;
use hubbub_core::engine::{Answer, EngineError, HistoryPage, HistoryQuery};
use hubbub_core::hooks::{ChannelHooks, UserEvents};
use hubbub_protocol::codes::{ERROR_PERMISSION_DENIED, ERROR_UNKNOWN_CHANNEL};
use hubbub_protocol::{json_from_str, ClientInfo, ProtocolError, Publication, StreamPosition};
use hubbub_store::{RoomId, StoredEvent, UserId};
use std::sync::{Arc, Weak};

/// Most events replayed by one history read.
const MAX_REPLAY: u32 = 10_000;

/// Events read from the log per query, by history reads and by the publisher catching up:
/// a read stops as soon as its answer is full, so a long log is never loaded whole.
const READ_BATCH: u32 = 64;

fn parse_room(channel: &str) -> Option<RoomId> {
    channel.strip_prefix(ROOM_NAMESPACE)?.strip_prefix(':')?.parse().ok()
}

pub(crate) fn publication(event: &StoredEvent) -> Result<Publication, EngineError> {
    let data =
        json_from_str(&event.json).map_err(|e| EngineError::Unavailable(format!("stored event: {e}")))?;
    Ok(Publication { data, info: None, offset: event.seq, tags: None })
}

/// The `room` namespace's hooks. Holds the chat weakly: the chat owns the node, which
/// owns the hooks.
pub struct RoomHooks {
    pub chat: Weak<Chat>,
    pub sequencer: Arc<Sequencer>,
}

#[async_trait]
impl ChannelHooks for RoomHooks {
    async fn authorize_subscribe(&self, user: &str, channel: &str) -> Result<(), ProtocolError> {
        let chat = self.chat.upgrade().ok_or_else(|| ProtocolError::from(ERROR_PERMISSION_DENIED))?;
        let (Some(room), Ok(user)) = (parse_room(channel), user.parse::<UserId>()) else {
            return Err(ERROR_UNKNOWN_CHANNEL.into());
        };
        match chat.store.role(room, user).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(ERROR_PERMISSION_DENIED.into()),
            Err(e) => Err(crate::ChatError::from(e).into()),
        }
    }

    async fn history(&self, channel: &str, query: HistoryQuery) -> Result<HistoryPage, EngineError> {
        let chat = self.chat.upgrade().ok_or_else(|| EngineError::Unavailable("chat stopped".into()))?;
        let room_id = parse_room(channel).ok_or(EngineError::UnrecoverablePosition)?;
        let unavailable = |e: hubbub_store::StoreError| EngineError::Unavailable(e.to_string());
        // A reader subscribed here (a subscriber, a waiting poll) reads after this node's
        // delivery of the room is anchored: what it reads covers everything before what
        // the hub will still deliver to it.
        let delivered = self.sequencer.position(room_id, channel).await.map_err(unavailable)?;
        let room =
            chat.store.room(room_id).await.map_err(unavailable)?.ok_or(EngineError::UnrecoverablePosition)?;
        let position = StreamPosition { offset: room.last_seq, epoch: room.epoch.clone() };
        let after = match &query.since {
            Some(since) if !since.in_epoch(&room.epoch) || since.offset > room.last_seq => {
                return Err(EngineError::UnrecoverablePosition)
            }
            Some(since) => since.offset,
            None => 0,
        };
        let limit = query.limit.map_or(MAX_REPLAY, |l| l.min(MAX_REPLAY as usize) as u32);
        if limit == 0 {
            // The position alone: what has been *delivered* here, so that an event stored but
            // not yet delivered reaches this subscriber live instead of being taken as given.
            let delivered = delivered.unwrap_or(room.last_seq);
            let position = StreamPosition { offset: delivered.min(room.last_seq), ..position };
            return Ok(HistoryPage { publications: Vec::new(), position });
        }
        let mut answer = Answer::new(Some(limit as usize), query.max_bytes);
        if query.reverse && query.since.is_none() {
            // Newest first: the log is read backwards, one batch at a time.
            let mut top = room.last_seq;
            'backwards: while top > 0 && !answer.is_full() {
                let from = top.saturating_sub(READ_BATCH as u64);
                let events = chat.store.events_after(room_id, from, READ_BATCH).await.map_err(unavailable)?;
                for event in events.iter().rev() {
                    if !answer.offer(&publication(event)?) {
                        break 'backwards;
                    }
                }
                top = from;
            }
        } else {
            let mut cursor = after;
            'forwards: while !answer.is_full() {
                let events =
                    chat.store.events_after(room_id, cursor, READ_BATCH).await.map_err(unavailable)?;
                for event in &events {
                    if !answer.offer(&publication(event)?) {
                        break 'forwards;
                    }
                    cursor = event.seq;
                }
                if events.len() < READ_BATCH as usize {
                    break;
                }
            }
        }
        let mut publications = answer.into_publications();
        if query.reverse && query.since.is_some() {
            publications.reverse();
        }
        Ok(HistoryPage { publications, position })
    }

    async fn resync(&self, channel: &str) -> bool {
        if let Some(room) = parse_room(channel) {
            self.sequencer.resync(room, channel);
        }
        true
    }

    fn intercept_publication(&self, channel: &str, publication: Publication) -> Option<Publication> {
        // Ephemeral events (typing, receipts, presence) are not part of the stream.
        if publication.offset == 0 {
            return Some(publication);
        }
        let room = parse_room(channel)?;
        self.sequencer.arrive(room, channel, publication);
        None
    }
}

impl Chat {
    /// Publishes an event this node just stored, as it is: the nodes that receive it order
    /// each room's events themselves ([`crate::order`]), so publishers need not wait for
    /// each other.
    pub(crate) async fn publish_event(&self, event: &StoredEvent) {
        let channel = room_channel(event.room_id);
        match json_from_str(&event.json) {
            Ok(data) => {
                if let Err(e) = self.node.publish_with_offset(&channel, data, event.seq).await {
                    tracing::error!(room = event.room_id, seq = event.seq, error = %e, "publish failed");
                }
            }
            Err(e) => {
                tracing::error!(room = event.room_id, seq = event.seq, error = %e, "stored event is not JSON")
            }
        }
    }

    /// Publishes the stored event `seq` of the room again.
    pub(crate) async fn republish(&self, room: RoomId, seq: u64) {
        match self.store.events_after(room, seq.saturating_sub(1), 1).await {
            Ok(events) => {
                for event in events.iter().filter(|e| e.seq == seq) {
                    self.publish_event(event).await;
                }
            }
            Err(e) => tracing::warn!(room, seq, error = %e, "event not published again"),
        }
    }

    /// Publishes an ephemeral event (typing, receipts, presence): not stored, no offset.
    pub(crate) async fn publish_ephemeral(&self, channel: &str, event: serde_json::Value) {
        let Ok(data) = json_from_str(&event.to_string()) else { return };
        if let Err(e) = self.node.publish_with_offset(channel, data, 0).await {
            tracing::warn!(%channel, error = %e, "ephemeral event not published");
        }
    }

    /// Tells everyone who shares a room with `user` that they came online or went offline.
    async fn announce_presence(&self, user: UserId, online: bool) {
        let now = now_millis();
        if !online {
            if let Err(e) = self.store.set_last_seen(user, now).await {
                tracing::warn!(user, error = %e, "last seen not stored");
            }
        }
        let rooms = match self.store.rooms_of(user).await {
            Ok(r) => r,
            Err(e) => return tracing::warn!(user, error = %e, "presence not announced"),
        };
        let event = serde_json::json!({
            "type": "presence", "user_id": user, "online": online, "last_seen": now,
        });
        for summary in rooms {
            self.publish_ephemeral(&room_channel(summary.room.id), event.clone()).await;
        }
    }

    /// Makes the user's cluster-wide presence entry for this node match whether the user
    /// has a connection here, and announces the change when the user thereby came online
    /// on the first node, or went offline from the last one.
    ///
    /// A user is online while some node has an entry in the engine's presence under
    /// [`online_key`]: one entry per node (its id), added when the user's first connection
    /// there opens, removed when its last one closes, and kept alive by the engine's
    /// refresh, so the entries of a node that died expire within `engine.presence_ttl`.
    /// Runs after every change of the user's connections here, serialized per user (a
    /// striped lock): the last run sees the last change, whatever the order of the runs.
    async fn reconcile_presence(&self, user: UserId) {
        // Connections of users that are not chat accounts (tokens made with the CLI, numeric
        // or not) come and go too: nothing to store or announce for them.
        if self.caller(user).await.is_err() {
            return;
        }
        let _serial = self.presence_stripes[user.unsigned_abs() as usize % PRESENCE_STRIPES].lock().await;
        let key = online_key(user);
        let here = self.node.hub.is_online(&user.to_string());
        let entries = match self.node.presence.presence(&key).await {
            Ok(entries) => entries,
            Err(e) => return tracing::warn!(user, error = %e, "presence not updated"),
        };
        let listed = entries.contains_key(&self.node.id);
        let elsewhere = entries.len() > usize::from(listed);
        let result = match (here, listed) {
            (true, false) => {
                let info = ClientInfo {
                    user: user.to_string(),
                    client: self.node.id.clone(),
                    conn_info: None,
                    chan_info: None,
                };
                self.node.presence.add(&key, info).await
            }
            (false, true) => self.node.presence.remove(&key, &self.node.id).await,
            _ => return,
        };
        if let Err(e) = result {
            tracing::warn!(user, error = %e, "presence not updated");
        }
        if !elsewhere {
            self.announce_presence(user, here).await;
        }
    }

    /// Whether the user has a connection on any node.
    pub async fn is_online(&self, user: UserId) -> bool {
        if self.node.hub.is_online(&user.to_string()) {
            return true;
        }
        match self.node.presence.presence(&online_key(user)).await {
            Ok(entries) => !entries.is_empty(),
            Err(e) => {
                tracing::warn!(user, error = %e, "presence not read");
                false
            }
        }
    }
}

/// Locks that serialize presence updates per user (by user id modulo their number).
pub(crate) const PRESENCE_STRIPES: usize = 64;

/// The presence key (in the engine's presence store) of a user's nodes.
pub fn online_key(user: UserId) -> String {
    format!("chat.online:{user}")
}

/// Presence: online while any connection of the user is open, on any node.
pub struct Presence(pub Weak<Chat>);

impl Presence {
    fn changed(&self, user: &str) {
        let (Some(chat), Ok(id)) = (self.0.upgrade(), user.parse::<UserId>()) else { return };
        tokio::spawn(async move { chat.reconcile_presence(id).await });
    }
}

impl UserEvents for Presence {
    fn online(&self, user: &str) {
        self.changed(user);
    }
    fn offline(&self, user: &str) {
        self.changed(user);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_room;

    #[test]
    fn room_channels() {
        assert_eq!(parse_room("room:42"), Some(42));
        assert_eq!(parse_room("room:x"), None);
        assert_eq!(parse_room("roomy:1"), None);
        assert_eq!(parse_room("news"), None);
    }
}
