//! The shared suite over SQLite, and what only SQLite has: its file (restart, WAL, secure
//! delete), its own migrations, the in-memory database.

use std::collections::BTreeMap;

use serde_json::json;
use tempfile::TempDir;

use super::*;
use crate::tests::suite::{assert_contiguous_events, check_unread, new_message, send, user};
use crate::tests::TestStore;

crate::backend_suite!(SqliteStore);

async fn store() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("hubbub.db")).await.unwrap();
    (dir, store)
}

impl TestStore for SqliteStore {
    const MAX_BATCH: usize = MAX_BATCH;

    async fn fresh() -> Option<(Box<dyn std::any::Any + Send>, Self)> {
        let (dir, store) = store().await;
        Some((Box::new(dir), store))
    }

    fn with_limits(self, limits: StoreLimits) -> Self {
        SqliteStore::with_limits(self, limits)
    }

    fn append_commits(&self) -> u64 {
        SqliteStore::append_commits(self)
    }

    async fn count_rows(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(&self.readers).await.unwrap()
    }

    async fn recount_unread(&self) -> BTreeMap<(RoomId, UserId), u64> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT me.room_id, me.user_id, (SELECT COUNT(*) FROM messages x WHERE x.room_id = me.room_id \
               AND x.seq > me.read_seq AND x.sender_id != me.user_id AND x.deleted = 0) \
             FROM members me",
        )
        .fetch_all(&self.readers)
        .await
        .unwrap();
        rows.into_iter().map(|(room, user, n)| ((room, user), to_u64(n))).collect()
    }

    async fn fail_appends_of_boom(&self) {
        sqlx::raw_sql(
            "CREATE TRIGGER boom BEFORE INSERT ON events WHEN new.json LIKE '%\"text\":\"boom%' BEGIN \
               SELECT RAISE(ABORT, 'boom'); \
             END",
        )
        .execute(&self.writer)
        .await
        .unwrap();
    }

    /// FTS5's integrity check: the index agrees with its content table.
    async fn check_search_index(&self) {
        let mut conn = self.writer.acquire().await.unwrap();
        sqlx::query("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
            .execute(&mut *conn)
            .await
            .unwrap();
    }

    /// Not even in the file: freed space is overwritten (secure_delete), then checkpointed at
    /// close.
    async fn assert_text_gone_from_files(self, texts: &[&str]) {
        let path: String = sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
            .fetch_one(&self.readers)
            .await
            .unwrap();
        self.close().await;
        drop(self);
        let bytes = file_bytes(std::path::Path::new(&path));
        for text in texts {
            assert!(!contains(&bytes, text), "{text:?} is still in the database file");
        }
    }
}

#[test]
fn fts_queries_are_quoted() {
    assert_eq!(fts_query("hello world"), Some(r#""hello" "world"*"#.to_owned()));
    assert_eq!(fts_query(r#"  "AND" (OR) NEAR(x*  "#), Some(r#""AND" "OR" "NEAR" "x"*"#.to_owned()));
    assert_eq!(fts_query("?!* \"\" -- ()"), None);
    assert_eq!(fts_query(""), None);
    assert_eq!(fts_query("café-crème"), Some(r#""café" "crème"*"#.to_owned()));
}

#[test]
fn migration_checksum_is_stable() {
    // FNV-1a test vectors: a changed algorithm would make every database look edited.
    assert_eq!(checksum(""), "cbf29ce484222325");
    assert_eq!(checksum("a"), "af63dc4c8601ec8c");
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/data/hubbub.db");
    let (alice, bob, room, dm, epoch) = {
        let store = SqliteStore::open(&path).await.unwrap();
        let alice = user(&store, "alice").await;
        let bob = user(&store, "bob").await;
        let room = store.create_group("g", alice).await.unwrap();
        store.add_member(room.id, bob, Role::Admin).await.unwrap();
        let dm = store.dm(alice, bob).await.unwrap().id;
        for i in 0..20 {
            send(
                &store,
                room.id,
                if i % 2 == 0 { alice } else { bob },
                &format!("persistent {i}"),
                &format!("c{i}"),
            )
            .await;
        }
        send(&store, dm, bob, "hello alice", "d1").await;
        store.edit_message(room.id, 2, alice, "persistent edited").await.unwrap();
        store.react(room.id, 3, alice, "👍", true).await.unwrap();
        store.mark(room.id, alice, Some(10), Some(8)).await.unwrap();
        store.insert_refresh("tok", alice, "fam", i64::MAX).await.unwrap();
        store.add_notification(bob, "mention", Some(room.id), Some(2), &json!({"a": 1})).await.unwrap();
        store.set_last_seen(alice, 777).await.unwrap();
        store.close().await;
        drop(store);
        (alice, bob, room.id, dm, room.epoch)
    };
    assert!(path.exists());

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.user_by_name("ALICE").await.unwrap().unwrap().last_seen, Some(777));
    let r = store.room(room).await.unwrap().unwrap();
    assert_eq!((r.epoch.as_str(), r.last_seq), (epoch.as_str(), 23));
    assert_eq!(store.role(room, bob).await.unwrap(), Some(Role::Admin));
    assert_eq!(store.dm(bob, alice).await.unwrap().id, dm);
    let messages = store.messages(room, Page::Latest, 100).await.unwrap();
    assert_eq!(messages.len(), 20);
    assert_eq!(messages[0].text, "persistent edited");
    assert_eq!(messages[1].reactions.len(), 1);
    assert_eq!(assert_contiguous_events(&store, room).await.len(), 23);
    assert_eq!(store.mark(room, alice, None, None).await.unwrap(), (10, 8));
    assert_eq!(store.search(alice, "persistent", 100).await.unwrap().len(), 20);
    assert_eq!(store.search(alice, "edited", 100).await.unwrap().len(), 1);
    assert_eq!(store.notifications(bob, 10).await.unwrap()[0].payload, json!({"a": 1}));
    assert_eq!(
        store.rotate_refresh("tok", "tok2", i64::MAX, 0).await.unwrap(),
        RefreshOutcome::Rotated { user_id: alice }
    );
    // Duplicates are still recognised, and seqs carry on.
    assert!(matches!(
        store.append_message(new_message(room, alice, "again", "c0")).await.unwrap(),
        Appended::Duplicate(m) if m.seq == 2
    ));
    assert_eq!(send(&store, room, alice, "after restart", "c-new").await.seq, 24);
    assert_eq!(store.rooms_of(bob).await.unwrap().len(), 2);
}

#[tokio::test]
async fn migrations_are_recorded_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hubbub.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let versions: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, checksum FROM schema_version ORDER BY version")
            .fetch_all(&store.readers)
            .await
            .unwrap();
    assert_eq!(versions.len(), MIGRATIONS.len());
    assert_eq!(versions[0], (1, checksum(MIGRATIONS[0])));
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&store.writer).await.unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&store.writer).await.unwrap();
    assert_eq!(sync, 2, "synchronous = FULL");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&store.readers).await.unwrap();
    assert_eq!(fk, 1);
    store.close().await;
    drop(store);

    // Reopening applies nothing twice.
    let store = SqliteStore::open(&path).await.unwrap();
    let count: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM schema_version").fetch_one(&store.readers).await.unwrap();
    assert_eq!(count, MIGRATIONS.len() as i64);

    // An applied migration that no longer matches is refused.
    sqlx::query("UPDATE schema_version SET checksum = 'edited' WHERE version = 1")
        .execute(&store.writer)
        .await
        .unwrap();
    store.close().await;
    drop(store);
    assert!(matches!(SqliteStore::open(&path).await, Err(StoreError::Migration(_))));

    // So is a database from a newer program.
    let store = SqliteStore::open(&dir.path().join("other.db")).await.unwrap();
    sqlx::query("INSERT INTO schema_version (version, checksum, applied_at) VALUES (?, 'future', 0)")
        .bind(MIGRATIONS.len() as i64 + 1)
        .execute(&store.writer)
        .await
        .unwrap();
    store.close().await;
    drop(store);
    assert!(matches!(SqliteStore::open(&dir.path().join("other.db")).await, Err(StoreError::Migration(_))));
}

#[tokio::test]
async fn in_memory_store_works() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let dm = store.dm(alice, bob).await.unwrap().id;
    send(&store, dm, alice, "in memory", "x").await;
    assert_eq!(store.unread(dm, bob).await.unwrap(), 1);
    assert_eq!(store.search(bob, "memory", 10).await.unwrap().len(), 1);
    assert_eq!(store.rooms_of(bob).await.unwrap()[0].unread, 1);
    assert_eq!(store.append_commits(), 1);
}

#[tokio::test]
async fn upgrading_backfills_unread_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hubbub.db");
    {
        // A database at schema version 1, with what that version stored.
        let options = SqliteConnectOptions::new().filename(&path).create_if_missing(true).foreign_keys(true);
        let pool = one_connection().connect_with(options).await.unwrap();
        migrate(&pool, &MIGRATIONS[..1]).await.unwrap();
        sqlx::raw_sql(
            "INSERT INTO users (id, username, password_hash, created_at) VALUES \
               (1, 'alice', 'h', 0), (2, 'bob', 'h', 0), (3, 'carol', 'h', 0); \
             INSERT INTO rooms (id, kind, name, dm_key, epoch, last_seq, created_at) VALUES \
               (1, 'group', 'g', NULL, 'aaaaaaaa', 6, 0), (2, 'dm', '', '1:2', 'bbbbbbbb', 2, 0), \
               (3, 'group', 'quiet', NULL, 'cccccccc', 0, 0); \
             INSERT INTO members (room_id, user_id, role, delivered_seq, read_seq, joined_at) VALUES \
               (1, 1, 'owner', 0, 0, 0), (1, 2, 'member', 3, 2, 0), (1, 3, 'member', 6, 6, 0), \
               (2, 1, 'member', 1, 1, 0), (2, 2, 'member', 0, 0, 0), (3, 3, 'owner', 0, 0, 0); \
             INSERT INTO messages (room_id, seq, sender_id, text, created_at, deleted) VALUES \
               (1, 1, 1, 'm1', 0, 0), (1, 2, 2, 'm2', 0, 0), (1, 3, 3, '', 0, 1), \
               (1, 4, 1, 'm4', 0, 0), (1, 5, 2, 'm5', 0, 0), (1, 6, 1, 'm6', 0, 0), \
               (2, 1, 2, 'hi', 0, 0), (2, 2, 2, 'there', 0, 0);",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }

    let store = SqliteStore::open(&path).await.unwrap();
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version")
        .fetch_all(&store.readers)
        .await
        .unwrap();
    assert_eq!(versions, (1..=MIGRATIONS.len() as i64).collect::<Vec<_>>());
    // alice: m2, m5 (m3 is deleted); bob: m4, m6 above his marker; carol has read it all.
    check_unread(&store, &[(1, 1, 2), (1, 2, 2), (1, 3, 0), (2, 1, 1), (2, 2, 0), (3, 3, 0)]).await;

    // The backfilled counts are then kept up to date.
    send(&store, 1, 1, "after the upgrade", "u1").await;
    check_unread(&store, &[(1, 1, 2), (1, 2, 3), (1, 3, 1)]).await;
    store.delete_message(1, 5, 2).await.unwrap();
    check_unread(&store, &[(1, 1, 1), (1, 2, 3), (1, 3, 1)]).await;
    store.mark(1, 2, None, Some(u64::MAX)).await.unwrap();
    check_unread(&store, &[(1, 1, 1), (1, 2, 0), (1, 3, 1)]).await;
}

/// Every byte of the database file and its WAL, for searching removed text in them.
fn file_bytes(path: &std::path::Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    bytes.extend(std::fs::read(wal).unwrap_or_default());
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A database written before redaction existed is redacted when it is opened.
#[tokio::test]
async fn upgrading_redacts_what_was_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hubbub.db");
    {
        let options = SqliteConnectOptions::new().filename(&path).create_if_missing(true).foreign_keys(true);
        let pool = one_connection().connect_with(options).await.unwrap();
        migrate(&pool, &MIGRATIONS[..2]).await.unwrap();
        let message = |text: &str, deleted: bool| {
            json!({"type": "message", "message": {"room_id": 1, "seq": 1, "sender_id": 1, "sender": "alice",
                "text": text, "client_msg_id": "", "reply_to": null, "created_at": 0, "edited_at": null,
                "deleted": deleted, "reactions": []}})
            .to_string()
        };
        sqlx::raw_sql(
            "INSERT INTO users (id, username, password_hash, created_at) VALUES (1, 'alice', 'h', 0); \
             INSERT INTO rooms (id, kind, name, dm_key, epoch, last_seq, created_at) VALUES \
               (1, 'group', 'g', NULL, 'aaaaaaaa', 2, 0); \
             INSERT INTO members (room_id, user_id, role, joined_at) VALUES (1, 1, 'owner', 0); \
             INSERT INTO messages (room_id, seq, sender_id, text, created_at, deleted) VALUES (1, 1, 1, '', 0, 1);",
        )
        .execute(&pool)
        .await
        .unwrap();
        sqlx::query("INSERT INTO events (room_id, seq, json, created_at) VALUES (1, 1, ?, 0), (1, 2, ?, 0)")
            .bind(message("old secret", false))
            .bind(message("", true).replace("\"message\",", "\"delete\","))
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO notifications (user_id, kind, room_id, seq, payload, created_at) \
             VALUES (1, 'mention', 1, 1, '{\"preview\":\"old secret\"}', 0)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let store = SqliteStore::open(&path).await.unwrap();
    for e in store.events_after(1, 0, 10).await.unwrap() {
        assert!(!e.json.contains("old secret"), "{}", e.json);
    }
    let notes = store.notifications(1, 10).await.unwrap();
    assert_eq!(notes[0].payload, json!({"preview": ""}));
}
