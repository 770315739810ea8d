//! The shared suite over PostgreSQL (each test on a database of its own, dropped after it),
//! and what only several writers on one database can break: two stores ("nodes") appending
//! to the same rooms at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use hubbub_testservices::TempDatabase;

use super::*;
use crate::tests::suite::{assert_contiguous_events, group, new_message, user};
use crate::tests::TestStore;

crate::backend_suite!(PgStore);

/// Connections per store in tests: several tests run at once against one shared server.
const TEST_POOL: u32 = 4;

/// A fresh database of its own and a store on it.
async fn database() -> Option<(TempDatabase, PgStore)> {
    let db = hubbub_testservices::postgres_database().await?;
    let store = PgStore::open_with_pool_size(db.url(), TEST_POOL).await.unwrap();
    Some((db, store))
}

impl TestStore for PgStore {
    const MAX_BATCH: usize = MAX_BATCH;

    async fn fresh() -> Option<(Box<dyn std::any::Any + Send>, Self)> {
        let (db, store) = database().await?;
        Some((Box::new(db), store))
    }

    fn with_limits(self, limits: StoreLimits) -> Self {
        PgStore::with_limits(self, limits)
    }

    fn append_commits(&self) -> u64 {
        PgStore::append_commits(self)
    }

    async fn count_rows(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}")).fetch_one(self.pool()).await.unwrap()
    }

    async fn recount_unread(&self) -> BTreeMap<(RoomId, UserId), u64> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT me.room_id, me.user_id, (SELECT COUNT(*) FROM messages x WHERE x.room_id = me.room_id \
               AND x.seq > me.read_seq AND x.sender_id <> me.user_id AND NOT x.deleted) \
             FROM members me",
        )
        .fetch_all(self.pool())
        .await
        .unwrap();
        rows.into_iter().map(|(room, user, n)| ((room, user), to_u64(n))).collect()
    }

    async fn fail_appends_of_boom(&self) {
        sqlx::raw_sql(
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN \
               IF new.json LIKE '%\"text\":\"boom%' THEN RAISE EXCEPTION 'boom'; END IF; \
               RETURN new; \
             END $$; \
             CREATE TRIGGER boom BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION boom();",
        )
        .execute(self.pool())
        .await
        .unwrap();
    }

    /// The generated `tsvector` of every message is what its text gives now.
    async fn check_search_index(&self) {
        let stale: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages WHERE search <> to_tsvector('hubbub_search', text)",
        )
        .fetch_one(self.pool())
        .await
        .unwrap();
        assert_eq!(stale, 0);
    }

    /// The server's files are not ours to read (and an old row version keeps the text until
    /// VACUUM reclaims it): only the live rows are checked, by the suite.
    async fn assert_text_gone_from_files(self, _texts: &[&str]) {
        self.close().await;
    }
}

#[test]
fn tsqueries_are_quoted() {
    use super::search::tsquery;
    assert_eq!(tsquery("hello world").as_deref(), Some("'hello' & 'world':*"));
    assert_eq!(tsquery(r#"  "AND" (OR) NEAR(x*  "#).as_deref(), Some("'AND' & 'OR' & 'NEAR' & 'x':*"));
    assert_eq!(tsquery("?!* '' -- () & | ! <->"), None);
    assert_eq!(tsquery("café-crème").as_deref(), Some("'café' & 'crème':*"));
}

/// Two nodes (two stores, each with its own pool and group-commit writer) append to the
/// same rooms at once, with retries of the same `client_msg_id` sent to both: every room's
/// seqs are 1..N with no gap and no duplicate, every `client_msg_id` is stored once, and
/// every retry is answered with its original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_appending_to_one_room_keep_seqs_contiguous() {
    let Some((db, node1)) = database().await else { return };
    let node2 = PgStore::open_with_pool_size(db.url(), TEST_POOL).await.unwrap();
    let alice = user(&node1, "alice").await;
    let bob = user(&node1, "bob").await;
    let carol = user(&node1, "carol").await;
    let room = group(&node1, "busy", alice, &[bob, carol]).await;
    let other = group(&node2, "other", bob, &[alice]).await;
    let senders = [alice, bob, carol];
    const N: usize = 600;

    let started = Instant::now();
    let tasks: Vec<_> = (0..N)
        .flat_map(|i| {
            let sender = senders[i % 3];
            // Every fifth message is sent to both nodes at once (a client retrying on another
            // node); every seventh goes to the other room, so batches hold several rooms.
            let target = if i % 7 == 0 && sender != carol { other } else { room };
            let id = format!("c{i}");
            let nodes: Vec<PgStore> = if i % 5 == 0 {
                vec![node1.clone(), node2.clone()]
            } else {
                vec![[&node1, &node2][i % 2].clone()]
            };
            nodes.into_iter().map(move |node| {
                let message = new_message(target, sender, &format!("m{i}"), &id);
                tokio::spawn(async move { node.append_message(message).await })
            })
        })
        .collect();
    let mut new: HashMap<(UserId, String), Message> = HashMap::new();
    let mut duplicates = Vec::new();
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(60), task).await.unwrap().unwrap().unwrap() {
            Appended::New { message, .. } => {
                let previous = new.insert((message.sender_id, message.client_msg_id.clone()), message);
                assert!(previous.is_none(), "a client_msg_id was stored twice");
            }
            Appended::Duplicate(message) => duplicates.push(message),
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(new.len(), N);
    assert_eq!(duplicates.len(), N.div_ceil(5), "each retry is one duplicate");
    for duplicate in &duplicates {
        assert_eq!(new.get(&(duplicate.sender_id, duplicate.client_msg_id.clone())), Some(duplicate));
    }
    // Membership events: bob and carol joined `room`, alice joined `other`.
    for (target, store, joins) in [(room, &node1, 2), (other, &node2, 1)] {
        let events = assert_contiguous_events(store, target).await;
        let messages = store.messages(target, Page::After(0), 10_000).await.unwrap();
        let ids: HashSet<&str> = messages.iter().map(|m| m.client_msg_id.as_str()).collect();
        assert_eq!(ids.len(), messages.len());
        assert_eq!(events.len(), messages.len() + joins);
    }
    let commits = node1.append_commits() + node2.append_commits();
    eprintln!(
        "two nodes: {} appends ({} retries) in {elapsed:?} over {commits} commits: {:.0} appends/s",
        N + duplicates.len(),
        duplicates.len(),
        (N + duplicates.len()) as f64 / elapsed.as_secs_f64()
    );
    // Another node sees the same stream.
    assert_eq!(
        node2.events_after(room, 0, 10_000).await.unwrap(),
        node1.events_after(room, 0, 10_000).await.unwrap()
    );
}

/// Two nodes adding members at once never pass a membership bound, and never deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_cannot_pass_the_membership_bounds_together() {
    let Some((db, node1)) = database().await else { return };
    let limits = StoreLimits { members_per_room: 5, rooms_per_user: 3, ..StoreLimits::default() };
    let node1 = node1.with_limits(limits);
    let node2 = PgStore::open_with_pool_size(db.url(), TEST_POOL).await.unwrap().with_limits(limits);
    let owner = user(&node1, "owner").await;
    let room = node1.create_group("g", owner).await.unwrap().id;
    let mut users = Vec::new();
    for i in 0..12 {
        users.push(user(&node1, &format!("u{i}")).await);
    }
    let tasks: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, &u)| {
            let node = if i % 2 == 0 { node1.clone() } else { node2.clone() };
            tokio::spawn(async move { node.add_member(room, u, Role::Member).await })
        })
        .collect();
    let mut added = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(Some(_)) => added += 1,
            Err(StoreError::LimitExceeded(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(added, 4, "the owner and four others fill five places");
    assert_eq!(node2.members(room).await.unwrap().len(), 5);
    assert_contiguous_events(&node1, room).await;
}

/// Nodes starting at once on a new database apply the migrations once (sqlx's advisory lock),
/// and a store opens on a database already migrated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_migrate_once() {
    let Some(db) = hubbub_testservices::postgres_database().await else { return };
    let opens: Vec<_> = (0..3)
        .map(|_| {
            let url = db.url().to_owned();
            tokio::spawn(async move { PgStore::open_with_pool_size(&url, 2).await })
        })
        .collect();
    let mut stores = Vec::new();
    for open in opens {
        stores.push(open.await.unwrap().unwrap());
    }
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(stores[0].pool())
        .await
        .unwrap();
    assert_eq!(applied as usize, MIGRATOR.iter().count());
    let alice = user(&stores[1], "alice").await;
    assert_eq!(stores[2].user(alice).await.unwrap().unwrap().username, "alice");
}

/// A store that cannot reach its database says so when it opens, within the timeout.
#[tokio::test]
async fn an_unreachable_database_fails_at_open() {
    let port = hubbub_testservices::free_port();
    let started = Instant::now();
    let result = PgStore::open(&format!("postgres://postgres@127.0.0.1:{port}/hubbub")).await;
    assert!(matches!(result, Err(StoreError::Database(_))), "{:?}", result.err());
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Appends per second with the group commit: many concurrent senders on one store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_throughput() {
    let Some((_db, store)) = database().await else { return };
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let rooms = [group(&store, "a", alice, &[bob]).await, group(&store, "b", alice, &[bob]).await];
    const N: usize = 4000;
    let started = Instant::now();
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let store = store.clone();
            let message = new_message(rooms[i % 2], [alice, bob][i % 2], "hello there", &format!("t{i}"));
            tokio::spawn(async move { store.append_message(message).await })
        })
        .collect();
    for task in tasks {
        assert!(matches!(task.await.unwrap().unwrap(), Appended::New { .. }));
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{N} concurrent appends in {elapsed:?} over {} commits: {:.0} appends/s",
        store.append_commits(),
        N as f64 / elapsed.as_secs_f64()
    );
    for room in rooms {
        assert_eq!(assert_contiguous_events(&store, room).await.len(), N / 2 + 1);
    }
}

/// The database drops every connection of the store (a restart, a failover, an idle timeout):
/// the pool notices and connects again, so the store goes on by itself, and what was
/// acknowledged before is there after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connections_are_replaced() {
    use sqlx::Connection;
    let Some((db, store)) = database().await else { return };
    let alice = user(&store, "alice").await;
    let room = store.create_group("g", alice).await.unwrap().id;
    let first = store.append_message(new_message(room, alice, "before", "b")).await.unwrap();
    assert!(matches!(first, Appended::New { .. }));

    let mut admin = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!killed.is_empty(), "the store had connections to drop");

    // Within a few tries (a request on a connection dropped under it fails), it works again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let appended = loop {
        match store.append_message(new_message(room, alice, "after", "a")).await {
            Ok(appended) => break appended,
            Err(e) if Instant::now() < deadline => {
                eprintln!("append after the connections were dropped: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the store did not recover: {e}"),
        }
    };
    assert!(matches!(appended, Appended::New { ref message, .. } if message.seq == 2), "{appended:?}");
    assert_eq!(store.messages(room, Page::Latest, 10).await.unwrap().len(), 2);
    assert_contiguous_events(&store, room).await;
}

/// A node restarting (a new store on the same database, migrations already applied) finds
/// everything: rooms with their epochs, seqs that carry on, retries still recognized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_finds_everything() {
    let Some((db, store)) = database().await else { return };
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let room = store.create_group("g", alice).await.unwrap();
    store.add_member(room.id, bob, Role::Admin).await.unwrap();
    for i in 0..5 {
        store
            .append_message(new_message(room.id, alice, &format!("persistent {i}"), &format!("c{i}")))
            .await
            .unwrap();
    }
    store.mark(room.id, bob, Some(4), Some(3)).await.unwrap();
    store.insert_refresh("tok", alice, "fam", i64::MAX).await.unwrap();
    store.close().await;
    drop(store);

    let store = PgStore::open_with_pool_size(db.url(), TEST_POOL).await.unwrap();
    let r = store.room(room.id).await.unwrap().unwrap();
    assert_eq!((r.epoch.as_str(), r.last_seq), (room.epoch.as_str(), 6));
    assert_eq!(store.role(room.id, bob).await.unwrap(), Some(Role::Admin));
    assert_eq!(store.unread(room.id, bob).await.unwrap(), 3);
    assert_eq!(store.search(bob, "persistent", 10).await.unwrap().len(), 5);
    assert!(matches!(
        store.append_message(new_message(room.id, alice, "again", "c0")).await.unwrap(),
        Appended::Duplicate(m) if m.seq == 2
    ));
    let next = store.append_message(new_message(room.id, alice, "after", "c-new")).await.unwrap();
    assert!(matches!(next, Appended::New { ref message, .. } if message.seq == 7), "{next:?}");
    assert_eq!(
        store.rotate_refresh("tok", "tok2", i64::MAX, 0).await.unwrap(),
        RefreshOutcome::Rotated { user_id: alice }
    );
    assert_contiguous_events(&store, room.id).await;
}
