//! Helpers both backends share: conversions, the text forms of enums, reaction grouping and
//! the splitting of a search query into words.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Millis, Reaction, Role, RoomId, RoomKind, StoreError, StoreResult, UserId};

/// Most words of a search query that are used.
pub(crate) const MAX_SEARCH_TERMS: usize = 16;

pub(crate) fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(crate) fn decode_error(what: String) -> StoreError {
    StoreError::Database(sqlx::Error::Decode(what.into()))
}

pub(crate) fn role_str(role: Role) -> &'static str {
    match role {
        Role::Member => "member",
        Role::Admin => "admin",
        Role::Owner => "owner",
    }
}

pub(crate) fn parse_role(s: &str) -> StoreResult<Role> {
    match s {
        "member" => Ok(Role::Member),
        "admin" => Ok(Role::Admin),
        "owner" => Ok(Role::Owner),
        other => Err(decode_error(format!("unknown role {other:?}"))),
    }
}

pub(crate) fn parse_room_kind(s: &str) -> StoreResult<RoomKind> {
    match s {
        "group" => Ok(RoomKind::Group),
        "dm" => Ok(RoomKind::Dm),
        other => Err(decode_error(format!("unknown room kind {other:?}"))),
    }
}

/// Groups reactions `(room_id, seq, emoji, user_id)`, ordered by when they were added, per
/// message and emoji (emojis in the order of their first reaction).
pub(crate) fn group_reactions(
    rows: impl IntoIterator<Item = (RoomId, u64, String, UserId)>,
) -> HashMap<(RoomId, u64), Vec<Reaction>> {
    let mut grouped: HashMap<(RoomId, u64), Vec<Reaction>> = HashMap::new();
    for (room, seq, emoji, user_id) in rows {
        let reactions = grouped.entry((room, seq)).or_default();
        match reactions.iter_mut().find(|r| r.emoji == emoji) {
            Some(reaction) => reaction.user_ids.push(user_id),
            None => reactions.push(Reaction { emoji, user_ids: vec![user_id] }),
        }
    }
    grouped
}

/// The words of a user's search text (runs of letters and digits, at most
/// [`MAX_SEARCH_TERMS`]): each backend quotes them into its own query syntax, so that no
/// input is ever a syntax error.
pub(crate) fn search_terms(query: &str) -> Vec<&str> {
    query.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).take(MAX_SEARCH_TERMS).collect()
}
