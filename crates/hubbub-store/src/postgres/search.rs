//! Full-text search: a `tsvector` column generated from the text (configuration
//! `hubbub_search`: `simple` behind `unaccent`, so case and diacritics do not matter) with a
//! GIN index; matches are marked `[` `]` by `ts_headline`.

use sqlx::Row;

use super::PgStore;
use crate::common::{search_terms, to_u64};
use crate::{SearchHit, StoreResult, UserId};

/// Turns a user's search text into a `tsquery` that cannot be a syntax error: every word (only
/// letters and digits) becomes a quoted term, all of them must match (`&`), the last one as a
/// prefix. `None` when there is no word.
pub(crate) fn tsquery(query: &str) -> Option<String> {
    let terms: Vec<String> = search_terms(query).into_iter().map(|t| format!("'{t}'")).collect();
    if terms.is_empty() {
        return None;
    }
    Some(terms.join(" & ") + ":*")
}

pub(super) async fn search(
    store: &PgStore,
    user: UserId,
    query: &str,
    limit: u32,
) -> StoreResult<Vec<SearchHit>> {
    let Some(tsquery) = tsquery(query) else { return Ok(Vec::new()) };
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT m.room_id, r.name, m.seq, u.username, \
           ts_headline('hubbub_search', m.text, q, 'StartSel=[, StopSel=], MaxWords=24, MinWords=12') AS snippet, \
           m.created_at \
         FROM to_tsquery('hubbub_search', $1) AS q, messages m \
         JOIN rooms r ON r.id = m.room_id \
         JOIN users u ON u.id = m.sender_id \
         WHERE m.search @@ q AND NOT m.deleted \
           AND m.room_id IN (SELECT room_id FROM members WHERE user_id = $2) \
         ORDER BY m.created_at DESC, m.id DESC \
         LIMIT $3",
    )
    .bind(tsquery)
    .bind(user)
    .bind(i64::from(limit))
    .fetch_all(&store.pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(SearchHit {
                room_id: row.try_get("room_id")?,
                room_name: row.try_get("name")?,
                seq: to_u64(row.try_get("seq")?),
                sender: row.try_get("username")?,
                snippet: row.try_get("snippet")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect()
}
