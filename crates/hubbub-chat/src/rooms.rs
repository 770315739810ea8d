//! Rooms, members, messages, receipts, typing, notifications and search: the chat's rules,
//! shared by the REST API and the RPC methods.

use crate::error::{ChatError, ChatResult, Kind};
use crate::limit::{RateLimiter, Refused};
use crate::{now_millis, room_channel, user_channel, Chat};
use hubbub_store::{
    Appended, Member, Message, NewMessage, Notification, Page, Role, Room, RoomId, RoomKind, SearchHit,
    StoreError, User, UserId,
};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

/// Longest room name, in characters.
const MAX_ROOM_NAME: usize = 80;
const MAX_CLIENT_MSG_ID: usize = 64;
const MAX_EMOJI: usize = 16;
/// Messages read from the store per query when a page is built (see `messages_within`).
const MESSAGE_BATCH: usize = 25;

/// At most one typing event per user and room per interval; a bounded map (see
/// [`RateLimiter`]): when it is full, typing events that need a new entry are dropped.
pub struct TypingThrottle(RateLimiter<(RoomId, UserId)>);

impl TypingThrottle {
    pub fn new(every: Duration, max_keys: usize) -> Self {
        TypingThrottle(RateLimiter::new(1, every, max_keys))
    }

    fn allow(&self, room: RoomId, user: UserId) -> bool {
        self.0.acquire(&(room, user)).is_ok()
    }
}

/// A member as the room list shows them.
#[derive(Debug, Serialize)]
pub struct MemberView {
    pub id: UserId,
    pub username: String,
    pub role: Role,
    pub online: bool,
    pub last_seen: Option<i64>,
    pub delivered_seq: u64,
    pub read_seq: u64,
}

/// A room as the room list shows it.
#[derive(Debug, Serialize)]
pub struct RoomView {
    pub id: RoomId,
    pub kind: RoomKind,
    pub name: String,
    pub channel: String,
    pub last_seq: u64,
    pub role: Role,
    pub last_message: Option<Message>,
    pub unread: u64,
    pub members: Vec<MemberView>,
}

/// The delivered and read markers of one member.
#[derive(Debug, Serialize)]
pub struct Markers {
    pub room_id: RoomId,
    pub user_id: UserId,
    pub delivered_seq: u64,
    pub read_seq: u64,
}

fn validate_room_name(name: &str) -> ChatResult<String> {
    let name = name.trim();
    if name.is_empty() {
        return Err(ChatError::bad_request("the room needs a name"));
    }
    if name.chars().count() > MAX_ROOM_NAME {
        return Err(ChatError::bad_request(format!("room names are at most {MAX_ROOM_NAME} characters")));
    }
    if name.contains('\0') {
        return Err(ChatError::bad_request("the room name contains a NUL character"));
    }
    Ok(name.to_owned())
}

/// `@name` mentions in a text.
fn mentions(text: &str) -> Vec<&str> {
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':' | '!' | '?' | '(' | ')'))
        .filter_map(|w| w.strip_prefix('@'))
        .map(|w| w.trim_end_matches('.'))
        .filter(|w| !w.is_empty())
        .collect()
}

impl Chat {
    fn member_view(&self, m: &Member, online: &HashMap<UserId, bool>) -> MemberView {
        MemberView {
            id: m.user.id,
            username: m.user.username.clone(),
            role: m.role,
            online: online.get(&m.user.id).copied().unwrap_or(false),
            last_seen: m.user.last_seen,
            delivered_seq: m.delivered_seq,
            read_seq: m.read_seq,
        }
    }

    pub async fn require_member(&self, room: RoomId, user: UserId) -> ChatResult<Role> {
        match self.store.role(room, user).await? {
            Some(role) => Ok(role),
            // Only the refusal needs to know which it is.
            None if self.store.room(room).await?.is_none() => Err(ChatError::not_found("no such room")),
            None => Err(ChatError::not_member()),
        }
    }

    async fn require_admin(&self, room: RoomId, user: UserId) -> ChatResult<Room> {
        let role = self.require_member(room, user).await?;
        let room = self.store.room(room).await?.ok_or_else(|| ChatError::not_found("no such room"))?;
        if room.kind == RoomKind::Dm {
            return Err(ChatError::bad_request("direct conversations have exactly two members"));
        }
        if role < Role::Admin {
            return Err(ChatError::forbidden("only the room's owner and admins can do this"));
        }
        Ok(room)
    }

    pub async fn room_view(&self, room: RoomId, user: UserId) -> ChatResult<RoomView> {
        self.require_member(room, user).await?;
        let rooms = self.rooms(user).await?;
        rooms.into_iter().find(|r| r.id == room).ok_or_else(ChatError::not_member)
    }

    pub async fn rooms(&self, user: UserId) -> ChatResult<Vec<RoomView>> {
        let summaries = self.store.rooms_of(user).await?;
        // Each member once, however many rooms they share: online means on any node.
        let mut online = HashMap::new();
        for member in summaries.iter().flat_map(|s| &s.members) {
            if let std::collections::hash_map::Entry::Vacant(slot) = online.entry(member.user.id) {
                slot.insert(self.is_online(member.user.id).await);
            }
        }
        Ok(summaries
            .into_iter()
            .map(|s| RoomView {
                id: s.room.id,
                kind: s.room.kind,
                name: s.room.name.clone(),
                channel: room_channel(s.room.id),
                last_seq: s.room.last_seq,
                role: s.role,
                last_message: s.last_message,
                unread: s.unread,
                members: s.members.iter().map(|m| self.member_view(m, &online)).collect(),
            })
            .collect())
    }

    pub async fn create_room(&self, owner: &User, name: &str) -> ChatResult<RoomView> {
        self.spend_write(owner.id)?;
        let name = validate_room_name(name)?;
        let room = self.store.create_group(&name, owner.id).await?;
        self.room_view(room.id, owner.id).await
    }

    pub async fn open_dm(&self, user: &User, username: &str) -> ChatResult<RoomView> {
        self.spend_write(user.id)?;
        let other = self
            .store
            .user_by_name(username.trim())
            .await?
            .ok_or_else(|| ChatError::not_found(format!("there is no user named {}", username.trim())))?;
        if other.id == user.id {
            return Err(ChatError::bad_request("a direct conversation needs another person"));
        }
        let room = self.store.dm(user.id, other.id).await?;
        // The other person's room list learns of it now, not at the first message.
        let notice = serde_json::json!({ "type": "room_added", "room_id": room.id, "by": user.username });
        self.publish_ephemeral(&user_channel(other.id), notice).await;
        self.room_view(room.id, user.id).await
    }

    pub async fn invite(&self, by: &User, room: RoomId, username: &str) -> ChatResult<RoomView> {
        self.spend_write(by.id)?;
        let r = self.require_admin(room, by.id).await?;
        let invitee = self
            .store
            .user_by_name(username.trim())
            .await?
            .ok_or_else(|| ChatError::not_found(format!("there is no user named {}", username.trim())))?;
        if let Some(event) = self.store.add_member(room, invitee.id, Role::Member).await? {
            self.publish_event(&event).await;
            let payload = serde_json::json!({ "room_name": r.name, "by": by.username });
            self.notify(invitee.id, "invite", Some(room), None, payload).await;
        }
        self.room_view(room, by.id).await
    }

    pub async fn leave(&self, user: &User, room: RoomId) -> ChatResult<()> {
        let role = self.require_member(room, user.id).await?;
        let r = self.store.room(room).await?.ok_or_else(|| ChatError::not_found("no such room"))?;
        if r.kind == RoomKind::Dm {
            return Err(ChatError::bad_request("you cannot leave a direct conversation"));
        }
        if role == Role::Owner {
            let others = self.store.members(room).await?.into_iter().filter(|m| m.user.id != user.id).count();
            if others > 0 {
                return Err(ChatError::bad_request("the owner can leave only as the last member"));
            }
        }
        let event = self.store.remove_member(room, user.id).await?;
        self.publish_event(&event).await;
        // Their subscriptions to the room end now, on every device.
        let _ = self.node.unsubscribe_user(&user.id.to_string(), &room_channel(room), None);
        Ok(())
    }

    pub async fn rename(&self, by: &User, room: RoomId, name: &str) -> ChatResult<RoomView> {
        self.spend_write(by.id)?;
        self.require_admin(room, by.id).await?;
        let name = validate_room_name(name)?;
        let event = self.store.rename_room(room, &name).await?;
        self.publish_event(&event).await;
        self.room_view(room, by.id).await
    }

    /// Takes one of the user's write slots (`chat.sends_per_second`, `chat.send_burst`):
    /// every write that adds to a room's log or creates a room spends one, whether it came
    /// by REST or RPC, before any work is done for it.
    fn spend_write(&self, user: UserId) -> ChatResult<()> {
        match self.sends.acquire(&user) {
            Ok(_slot) => Ok(()),
            Err(Refused::Limited) => Err(ChatError::new(
                Kind::TooManyRequests,
                format!(
                    "too many messages: at most {} at once and {} per second; wait a moment",
                    self.config.send_burst, self.config.sends_per_second
                ),
            )),
            Err(Refused::Full) => Err(ChatError::new(
                Kind::TooManyRequests,
                "the server is taking too many messages right now; try again in a moment",
            )),
        }
    }

    fn validate_text(&self, text: &str) -> ChatResult<String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(ChatError::bad_request("the message is empty"));
        }
        // No store keeps it the same way (PostgreSQL text cannot hold it at all): refused
        // alike on every backend.
        if trimmed.contains('\0') {
            return Err(ChatError::bad_request("the message contains a NUL character"));
        }
        let n = trimmed.chars().count();
        if n > self.config.max_message_length {
            return Err(ChatError::new(
                Kind::TooLarge,
                format!(
                    "the message is too long: {n} characters, at most {} allowed",
                    self.config.max_message_length
                ),
            ));
        }
        Ok(trimmed.to_owned())
    }

    /// Stores a message and publishes it. Acknowledged (returns) only once stored durably;
    /// the same `client_msg_id` from the same sender returns the original message.
    pub async fn send(
        &self,
        sender: &User,
        room: RoomId,
        text: &str,
        client_msg_id: &str,
        reply_to: Option<u64>,
    ) -> ChatResult<Message> {
        self.spend_write(sender.id)?;
        let text = self.validate_text(text)?;
        let client_msg_id = client_msg_id.trim();
        if client_msg_id.is_empty() || client_msg_id.len() > MAX_CLIENT_MSG_ID || client_msg_id.contains('\0')
        {
            return Err(ChatError::bad_request(format!(
                "client_msg_id is required (1 to {MAX_CLIENT_MSG_ID} characters): it makes retries safe"
            )));
        }
        // The store checks membership in the append's own transaction. A reply is checked
        // first all the same, so that only members learn which messages exist.
        if reply_to.is_some() {
            self.require_member(room, sender.id).await?;
        }
        if let Some(seq) = reply_to {
            if self.store.message(room, seq).await?.is_none() {
                return Err(ChatError::bad_request(format!(
                    "the message replied to (seq {seq}) is not in this room"
                )));
            }
        }
        let appended = self
            .store
            .append_message(NewMessage {
                room_id: room,
                sender_id: sender.id,
                text,
                client_msg_id: client_msg_id.to_owned(),
                reply_to,
            })
            .await
            .map_err(|e| match e {
                StoreError::Forbidden => ChatError::not_member(),
                StoreError::NotFound => {
                    ChatError::not_found("no such room (or the message replied to is gone)")
                }
                other => other.into(),
            })?;
        match appended {
            Appended::Duplicate(original) => {
                // A retry: perhaps of a send stored by a node that died before it published
                // (or answered). Published again so that nobody waits for the room's next
                // event to see it; receivers drop it if they have it.
                self.republish(original.room_id, original.seq).await;
                Ok(original)
            }
            Appended::New { message, event, unread } => {
                // The room's publication and the members' notices are queued back to back, so
                // a member's connection usually writes both at once.
                self.publish_event(&event).await;
                self.after_send(sender, &message, unread).await;
                Ok(message)
            }
        }
    }

    /// Notices for the other members: a new-message notice (with their unread count, as the
    /// store counted it with this message) on their personal channel, and a stored
    /// notification for each @mention.
    async fn after_send(&self, sender: &User, message: &Message, unread: Vec<(UserId, u64)>) {
        let preview: String = message.text.chars().take(hubbub_store::NOTIFICATION_PREVIEW_CHARS).collect();
        for &(member, unread) in &unread {
            let notice = serde_json::json!({
                "type": "message", "room_id": message.room_id, "seq": message.seq,
                "from": sender.username, "preview": preview, "unread": unread,
            });
            self.publish_ephemeral(&user_channel(member), notice).await;
        }
        let mentioned: Vec<String> = mentions(&message.text).into_iter().map(str::to_lowercase).collect();
        if mentioned.is_empty() {
            return;
        }
        let members = match self.store.unread_by_member(message.room_id).await {
            Ok(m) => m,
            Err(e) => return tracing::warn!(error = %e, "mention notifications not sent"),
        };
        for (member, username, _) in members.into_iter().filter(|(id, ..)| *id != sender.id) {
            if mentioned.contains(&username.to_lowercase()) {
                let payload = serde_json::json!({ "from": sender.username, "preview": preview });
                self.notify(member, "mention", Some(message.room_id), Some(message.seq), payload).await;
            }
        }
    }

    /// Stores a notification and pushes it on the user's channel.
    async fn notify(
        &self,
        user: UserId,
        kind: &str,
        room: Option<RoomId>,
        seq: Option<u64>,
        payload: serde_json::Value,
    ) {
        match self.store.add_notification(user, kind, room, seq, &payload).await {
            Ok(n) => {
                let event = serde_json::json!({ "type": "notification", "notification": n });
                self.publish_ephemeral(&user_channel(user), event).await;
            }
            Err(e) => tracing::warn!(user, error = %e, "notification not stored"),
        }
    }

    pub async fn edit(&self, user: &User, room: RoomId, seq: u64, text: &str) -> ChatResult<Message> {
        self.spend_write(user.id)?;
        let text = self.validate_text(text)?;
        self.require_member(room, user.id).await?;
        let (message, event) = self.store.edit_message(room, seq, user.id, &text).await?;
        self.publish_event(&event).await;
        Ok(message)
    }

    pub async fn delete(&self, user: &User, room: RoomId, seq: u64) -> ChatResult<Message> {
        self.spend_write(user.id)?;
        self.require_member(room, user.id).await?;
        let (message, event) = self.store.delete_message(room, seq, user.id).await?;
        self.publish_event(&event).await;
        Ok(message)
    }

    pub async fn react(
        &self,
        user: &User,
        room: RoomId,
        seq: u64,
        emoji: &str,
        add: bool,
    ) -> ChatResult<Message> {
        self.spend_write(user.id)?;
        let emoji = emoji.trim();
        if emoji.is_empty() || emoji.chars().count() > MAX_EMOJI || emoji.contains('\0') {
            return Err(ChatError::bad_request("a reaction is one emoji (or a short text)"));
        }
        self.require_member(room, user.id).await?;
        let (message, event) = self.store.react(room, seq, user.id, emoji, add).await?;
        self.publish_event(&event).await;
        Ok(message)
    }

    pub async fn messages(
        &self,
        user: &User,
        room: RoomId,
        page: Page,
        limit: u32,
    ) -> ChatResult<Vec<Message>> {
        self.require_member(room, user.id).await?;
        self.messages_within(room, page, limit.clamp(1, 200) as usize, self.node.client.answer_bytes()).await
    }

    /// A page of messages bounded by `limit` and by `max_bytes` of JSON (the first message
    /// is always given, so that paging moves on). Read from the store in small batches, in
    /// the page's direction, stopping once the page is full: a room of large messages is
    /// never loaded whole. A page cut short keeps the messages nearest its cursor (the
    /// newest for `Latest` and `Before`, the oldest for `After`), so the next page, asked
    /// `before` its first or `after` its last, continues without a gap.
    async fn messages_within(
        &self,
        room: RoomId,
        page: Page,
        limit: usize,
        max_bytes: usize,
    ) -> ChatResult<Vec<Message>> {
        let backwards = !matches!(page, Page::After(_));
        let mut taken: Vec<Message> = Vec::new();
        let mut bytes = 0usize;
        let mut cursor = page;
        'pages: while taken.len() < limit {
            let batch = (limit - taken.len()).min(MESSAGE_BATCH);
            let mut messages = self.store.messages(room, cursor, batch as u32).await?;
            let short = messages.len() < batch;
            // Nearest the cursor first.
            if backwards {
                messages.reverse();
            }
            for message in messages {
                // The comma between messages in the answer's array.
                let len = hubbub_protocol::json_len(&message) + 1;
                if !taken.is_empty() && bytes.saturating_add(len) > max_bytes {
                    break 'pages;
                }
                bytes = bytes.saturating_add(len);
                cursor = if backwards { Page::Before(message.seq) } else { Page::After(message.seq) };
                taken.push(message);
            }
            if short {
                break;
            }
        }
        if backwards {
            taken.reverse();
        }
        Ok(taken)
    }

    /// Moves the user's delivered/read markers forward (never back) and tells the room, and
    /// the user's other devices, where they are.
    pub async fn mark(
        &self,
        user: &User,
        room: RoomId,
        delivered: Option<u64>,
        read: Option<u64>,
    ) -> ChatResult<Markers> {
        if delivered.is_none() && read.is_none() {
            return Err(ChatError::bad_request("give delivered_seq, read_seq or both"));
        }
        self.require_member(room, user.id).await?;
        let (delivered_seq, read_seq) = self.store.mark(room, user.id, delivered, read).await?;
        let markers = Markers { room_id: room, user_id: user.id, delivered_seq, read_seq };
        let receipt = serde_json::json!({
            "type": "receipt", "user_id": user.id, "delivered_seq": delivered_seq, "read_seq": read_seq,
        });
        self.publish_ephemeral(&room_channel(room), receipt).await;
        if read.is_some() {
            let unread = self.store.unread(room, user.id).await?;
            let event = serde_json::json!({ "type": "unread", "room_id": room, "unread": unread });
            self.publish_ephemeral(&user_channel(user.id), event).await;
        }
        Ok(markers)
    }

    /// Forwards a typing event (never stored, throttled); clients drop it after
    /// `expires_ms` unless another arrives.
    pub async fn typing(&self, user: &User, room: RoomId) -> ChatResult<()> {
        self.require_member(room, user.id).await?;
        if self.typing.allow(room, user.id) {
            let event = serde_json::json!({
                "type": "typing", "user_id": user.id, "username": user.username, "expires_ms": 5000,
                "at": now_millis(),
            });
            self.publish_ephemeral(&room_channel(room), event).await;
        }
        Ok(())
    }

    pub async fn notifications(&self, user: &User, limit: u32) -> ChatResult<Vec<Notification>> {
        Ok(self.store.notifications(user.id, limit.clamp(1, 200)).await?)
    }

    pub async fn read_notifications(&self, user: &User, ids: &[i64]) -> ChatResult<()> {
        Ok(self.store.read_notifications(user.id, ids).await?)
    }

    pub async fn search(&self, user: &User, query: &str, limit: u32) -> ChatResult<Vec<SearchHit>> {
        let query = query.trim();
        if query.is_empty() {
            return Err(ChatError::bad_request("say what to search for"));
        }
        if query.chars().count() > 200 {
            return Err(ChatError::bad_request("the search is longer than 200 characters"));
        }
        Ok(self.store.search(user.id, query, limit.clamp(1, 100)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mentions() {
        assert_eq!(mentions("hi @bob, and @Carol. see @dave!"), vec!["bob", "Carol", "dave"]);
        assert!(mentions("mail me at a@b.c").is_empty());
    }

    #[test]
    fn throttles_typing_per_user_and_room() {
        let t = TypingThrottle::new(Duration::from_secs(60), 3);
        assert!(t.allow(1, 1));
        assert!(!t.allow(1, 1));
        assert!(t.allow(1, 2));
        assert!(t.allow(2, 1));
        assert!(!t.allow(3, 3), "a full throttle drops new keys");
    }
}
