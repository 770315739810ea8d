//! The tests every [`ChatStore`] backend passes, each a function over a fresh store of the
//! backend; [`crate::backend_suite`] makes them `#[tokio::test]`s of a backend.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::json;

use super::TestStore;
use crate::*;

pub(crate) async fn user<S: TestStore>(store: &S, name: &str) -> UserId {
    store.create_user(name, &format!("hash-{name}")).await.unwrap().id
}

pub(crate) fn new_message(room: RoomId, sender: UserId, text: &str, client_msg_id: &str) -> NewMessage {
    NewMessage {
        room_id: room,
        sender_id: sender,
        text: text.to_owned(),
        client_msg_id: client_msg_id.to_owned(),
        reply_to: None,
    }
}

pub(crate) async fn send<S: TestStore>(
    store: &S,
    room: RoomId,
    sender: UserId,
    text: &str,
    id: &str,
) -> Message {
    match store.append_message(new_message(room, sender, text, id)).await.unwrap() {
        Appended::New { message, .. } => message,
        Appended::Duplicate(m) => panic!("unexpected duplicate {m:?}"),
    }
}

pub(crate) fn event(stored: &StoredEvent) -> RoomEvent {
    serde_json::from_str(&stored.json).unwrap()
}

/// A group owned by the first user, with the others as members.
pub(crate) async fn group<S: TestStore>(store: &S, name: &str, owner: UserId, others: &[UserId]) -> RoomId {
    let room = store.create_group(name, owner).await.unwrap().id;
    for &other in others {
        store.add_member(room, other, Role::Member).await.unwrap().unwrap();
    }
    room
}

pub(crate) async fn assert_contiguous_events<S: TestStore>(store: &S, room: RoomId) -> Vec<StoredEvent> {
    let events = store.events_after(room, 0, 10_000).await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=events.len() as u64).collect();
    assert_eq!(seqs, expected, "event seqs must be contiguous from 1");
    assert_eq!(store.room(room).await.unwrap().unwrap().last_seq, events.len() as u64);
    events
}

pub(crate) async fn users<S: TestStore>(store: S) {
    let alice = store.create_user("Alice", "h1").await.unwrap();
    assert_eq!(alice.username, "Alice");
    assert_eq!(alice.last_seen, None);
    assert!(matches!(store.create_user("alice", "h2").await, Err(StoreError::Conflict)));
    assert!(matches!(store.create_user("ALICE", "h2").await, Err(StoreError::Conflict)));
    let bob = store.create_user("bob", "h3").await.unwrap();
    assert_ne!(alice.id, bob.id);

    let auth = store.user_auth("aLiCe").await.unwrap().unwrap();
    assert_eq!(auth.user, alice);
    assert_eq!(auth.password_hash, "h1");
    assert!(store.user_auth("carol").await.unwrap().is_none());
    assert_eq!(store.user(alice.id).await.unwrap().unwrap(), alice);
    assert!(store.user(9999).await.unwrap().is_none());
    assert_eq!(store.user_by_name("BOB").await.unwrap().unwrap(), bob);
    assert!(store.user_by_name("nobody").await.unwrap().is_none());

    store.set_last_seen(alice.id, 12345).await.unwrap();
    assert_eq!(store.user(alice.id).await.unwrap().unwrap().last_seen, Some(12345));
    assert!(matches!(store.set_last_seen(9999, 1).await, Err(StoreError::NotFound)));
}

/// Logging in again and again, or refreshing in a loop, keeps a bounded number of rows: the
/// oldest sessions beyond `sessions_per_user` are dropped, and each session keeps its
/// `refresh_history` latest used tokens (reuse of those still revokes it).
pub(crate) async fn refresh_tokens_are_bounded_per_user_and_session<S: TestStore>(store: S) {
    let limits = StoreLimits { sessions_per_user: 3, refresh_history: 2, ..StoreLimits::default() };
    let store = store.with_limits(limits);
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let now = 1_000_000;
    store.insert_refresh("bob-1", bob, "bob-fam", now + 1000).await.unwrap();
    for i in 0..10 {
        store.insert_refresh(&format!("a{i}"), alice, &format!("fam{i}"), now + 1000).await.unwrap();
    }
    assert_eq!(store.count_rows("refresh_tokens").await, 4, "3 sessions of alice and bob's");
    assert_eq!(store.rotate_refresh("a0", "x", now + 1000, now).await.unwrap(), RefreshOutcome::Invalid);
    assert_eq!(
        store.rotate_refresh("a9", "a9-1", now + 1000, now).await.unwrap(),
        RefreshOutcome::Rotated { user_id: alice }
    );
    assert_eq!(
        store.rotate_refresh("bob-1", "bob-2", now + 1000, now).await.unwrap(),
        RefreshOutcome::Rotated { user_id: bob }
    );

    let mut current = "a9-1".to_owned();
    for i in 2..50 {
        let next = format!("a9-{i}");
        let t = now + i;
        assert_eq!(
            store.rotate_refresh(&current, &next, now + 1000, t).await.unwrap(),
            RefreshOutcome::Rotated { user_id: alice }
        );
        current = next;
    }
    // alice: fam7, fam8 (1 each) + fam9 (2 used + current); bob: 1 used + current.
    assert_eq!(store.count_rows("refresh_tokens").await, 2 + 3 + 2);
    // The latest used one is still known: reuse revokes the session.
    assert_eq!(
        store.rotate_refresh("a9-48", "y", now + 1000, now + 60).await.unwrap(),
        RefreshOutcome::Reused
    );
    assert_eq!(
        store.rotate_refresh(&current, "z", now + 1000, now + 61).await.unwrap(),
        RefreshOutcome::Reused
    );
}

pub(crate) async fn refresh_tokens<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let now = 1_000_000;
    store.insert_refresh("t1", alice, "fam", now + 1000).await.unwrap();
    assert!(matches!(store.insert_refresh("t1", alice, "fam", now + 1000).await, Err(StoreError::Conflict)));
    assert!(matches!(store.insert_refresh("tx", 9999, "fam2", now + 1000).await, Err(StoreError::NotFound)));

    // Valid: rotated.
    assert_eq!(
        store.rotate_refresh("t1", "t2", now + 2000, now).await.unwrap(),
        RefreshOutcome::Rotated { user_id: alice }
    );
    assert_eq!(
        store.rotate_refresh("t2", "t3", now + 3000, now + 10).await.unwrap(),
        RefreshOutcome::Rotated { user_id: alice }
    );
    // A used token again: the whole family is revoked, including the latest one.
    assert_eq!(store.rotate_refresh("t1", "t9", now + 3000, now + 20).await.unwrap(), RefreshOutcome::Reused);
    assert_eq!(store.rotate_refresh("t3", "t4", now + 3000, now + 30).await.unwrap(), RefreshOutcome::Reused);
    // The replacement of a refused rotation was not stored.
    assert_eq!(
        store.rotate_refresh("t9", "t10", now + 3000, now + 30).await.unwrap(),
        RefreshOutcome::Invalid
    );

    // Unknown and expired.
    assert_eq!(store.rotate_refresh("nope", "x", now + 1000, now).await.unwrap(), RefreshOutcome::Invalid);
    store.insert_refresh("e1", alice, "fam-e", now + 100).await.unwrap();
    assert_eq!(
        store.rotate_refresh("e1", "e2", now + 1000, now + 100).await.unwrap(),
        RefreshOutcome::Invalid
    );
    assert_eq!(store.rotate_refresh("e2", "e3", now + 1000, now).await.unwrap(), RefreshOutcome::Invalid);

    // The new hash must be new: nothing changes when it is taken.
    store.insert_refresh("k1", alice, "fam-k", now + 1000).await.unwrap();
    store.insert_refresh("k2", alice, "fam-k2", now + 1000).await.unwrap();
    assert!(matches!(store.rotate_refresh("k1", "k2", now + 1000, now).await, Err(StoreError::Conflict)));
    assert_eq!(
        store.rotate_refresh("k1", "k3", now + 1000, now).await.unwrap(),
        RefreshOutcome::Rotated { user_id: alice }
    );

    // Revocation (logout) kills the family; the other families live on.
    store.insert_refresh("r1", alice, "fam-r", now + 1000).await.unwrap();
    store.insert_refresh("s1", alice, "fam-s", now + 1000).await.unwrap();
    assert!(store.revoke_refresh("r1").await.unwrap());
    assert!(!store.revoke_refresh("unknown").await.unwrap());
    assert_eq!(store.rotate_refresh("r1", "r2", now + 1000, now).await.unwrap(), RefreshOutcome::Reused);
    assert_eq!(
        store.rotate_refresh("s1", "s2", now + 1000, now).await.unwrap(),
        RefreshOutcome::Rotated { user_id: alice }
    );
}

pub(crate) async fn groups_and_members<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;

    let room = store.create_group("general", alice).await.unwrap();
    assert_eq!(room.kind, RoomKind::Group);
    assert_eq!(room.name, "general");
    assert_eq!(room.last_seq, 0);
    assert_eq!(room.epoch.len(), 8);
    assert!(room.epoch.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(store.room(room.id).await.unwrap().unwrap(), room);
    assert!(store.room(9999).await.unwrap().is_none());
    assert_eq!(store.role(room.id, alice).await.unwrap(), Some(Role::Owner));
    assert_eq!(store.role(room.id, bob).await.unwrap(), None);
    let other = store.create_group("random", bob).await.unwrap();
    assert_ne!(other.epoch, room.epoch);
    assert!(matches!(store.create_group("ghost", 9999).await, Err(StoreError::NotFound)));

    // add_member: one event, the room as it now is.
    let added = store.add_member(room.id, bob, Role::Admin).await.unwrap().unwrap();
    assert_eq!(added.seq, 1);
    assert_eq!(added.room_id, room.id);
    match event(&added) {
        RoomEvent::RoomUpdated { room: r, member_ids } => {
            assert_eq!(r.last_seq, 1);
            assert_eq!(r.epoch, room.epoch);
            assert_eq!(member_ids, vec![alice, bob]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.add_member(room.id, bob, Role::Member).await.unwrap(), None);
    assert_eq!(store.role(room.id, bob).await.unwrap(), Some(Role::Admin));
    assert!(matches!(store.add_member(9999, bob, Role::Member).await, Err(StoreError::NotFound)));
    assert!(matches!(store.add_member(room.id, 9999, Role::Member).await, Err(StoreError::NotFound)));
    store.add_member(room.id, carol, Role::Member).await.unwrap().unwrap();

    let members = store.members(room.id).await.unwrap();
    let ids: Vec<UserId> = members.iter().map(|m| m.user.id).collect();
    assert_eq!(ids, vec![alice, bob, carol]);
    assert_eq!(members[0].role, Role::Owner);
    assert_eq!(members[0].user.username, "alice");
    // A joiner starts at the seq of its join: history is not unread.
    assert_eq!((members[2].delivered_seq, members[2].read_seq), (2, 2));
    assert!(store.members(9999).await.unwrap().is_empty());

    // rename
    let renamed = store.rename_room(room.id, "lobby").await.unwrap();
    assert_eq!(renamed.seq, 3);
    match event(&renamed) {
        RoomEvent::RoomUpdated { room: r, .. } => assert_eq!((r.name.as_str(), r.last_seq), ("lobby", 3)),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.room(room.id).await.unwrap().unwrap().name, "lobby");
    assert!(matches!(store.rename_room(9999, "x").await, Err(StoreError::NotFound)));

    // remove
    let removed = store.remove_member(room.id, carol).await.unwrap();
    assert_eq!(removed.seq, 4);
    match event(&removed) {
        RoomEvent::RoomUpdated { member_ids, .. } => assert_eq!(member_ids, vec![alice, bob]),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.role(room.id, carol).await.unwrap(), None);
    assert!(matches!(store.remove_member(room.id, carol).await, Err(StoreError::NotFound)));
    assert!(matches!(store.remove_member(9999, carol).await, Err(StoreError::NotFound)));
    // Failed calls appended nothing.
    assert_eq!(assert_contiguous_events(&store, room.id).await.len(), 4);
}

pub(crate) async fn dm_is_one_room_per_pair<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;

    let ab = store.dm(alice, bob).await.unwrap();
    assert_eq!(ab.kind, RoomKind::Dm);
    assert_eq!(ab.name, "");
    assert_eq!(ab.last_seq, 0);
    assert_eq!(store.dm(bob, alice).await.unwrap(), ab);
    assert_eq!(store.dm(alice, bob).await.unwrap(), ab);
    let ac = store.dm(alice, carol).await.unwrap();
    assert_ne!(ac.id, ab.id);
    let ids: Vec<UserId> = store.members(ab.id).await.unwrap().iter().map(|m| m.user.id).collect();
    assert_eq!(ids, vec![alice, bob]);
    assert_eq!(store.role(ab.id, bob).await.unwrap(), Some(Role::Member));
    assert!(matches!(store.dm(alice, 9999).await, Err(StoreError::NotFound)));

    // A DM's membership and name are fixed.
    assert!(matches!(store.add_member(ab.id, carol, Role::Member).await, Err(StoreError::Forbidden)));
    assert!(matches!(store.remove_member(ab.id, bob).await, Err(StoreError::Forbidden)));
    assert!(matches!(store.rename_room(ab.id, "x").await, Err(StoreError::Forbidden)));

    // A note to self is a DM with one member.
    let me = store.dm(carol, carol).await.unwrap();
    assert_eq!(store.members(me.id).await.unwrap().len(), 1);
}

pub(crate) async fn concurrent_dm_creates_one_room<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    store.dm(alice, bob).await
                } else {
                    store.dm(bob, alice).await
                }
            })
        })
        .collect();
    let mut rooms = HashSet::new();
    for task in tasks {
        rooms.insert(task.await.unwrap().unwrap().id);
    }
    assert_eq!(rooms.len(), 1);
    assert_eq!(store.rooms_of(alice).await.unwrap().len(), 1);
}

pub(crate) async fn append_and_duplicates<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let eve = user(&store, "eve").await;
    let room = group(&store, "g", alice, &[bob]).await; // seq 1: bob joins

    let (first, first_event) =
        match store.append_message(new_message(room, alice, "hello", "c1")).await.unwrap() {
            Appended::New { message, event, .. } => (message, event),
            other => panic!("{other:?}"),
        };
    assert_eq!(first.seq, 2);
    assert_eq!(first.sender, "alice");
    assert_eq!(first.client_msg_id, "c1");
    assert!(!first.deleted && first.edited_at.is_none() && first.reactions.is_empty());
    assert_eq!(first_event.seq, 2);
    assert_eq!(event(&first_event), RoomEvent::Message { message: first.clone() });
    assert_eq!(store.message(room, 2).await.unwrap().unwrap(), first);

    // A retry: the original, nothing new.
    let retry = store.append_message(new_message(room, alice, "hello again", "c1")).await.unwrap();
    assert_eq!(retry, Appended::Duplicate(first.clone()));
    // The same client id from another sender is another message.
    let bobs = send(&store, room, bob, "hi", "c1").await;
    assert_eq!(bobs.seq, 3);
    // No client id: no deduplication.
    assert_eq!(send(&store, room, alice, "a", "").await.seq, 4);
    assert_eq!(send(&store, room, alice, "a", "").await.seq, 5);

    // Replies.
    let mut reply = new_message(room, bob, "re", "c2");
    reply.reply_to = Some(2);
    let Appended::New { message: reply, .. } = store.append_message(reply).await.unwrap() else { panic!() };
    assert_eq!(reply.reply_to, Some(2));
    assert_eq!(store.message(room, reply.seq).await.unwrap().unwrap().reply_to, Some(2));
    let mut bad_reply = new_message(room, bob, "re", "c3");
    bad_reply.reply_to = Some(99);
    assert!(matches!(store.append_message(bad_reply).await, Err(StoreError::NotFound)));

    // Refusals.
    assert!(matches!(
        store.append_message(new_message(room, eve, "x", "e1")).await,
        Err(StoreError::Forbidden)
    ));
    assert!(matches!(
        store.append_message(new_message(9999, alice, "x", "e2")).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.append_message(new_message(room, 9999, "x", "e3")).await,
        Err(StoreError::NotFound)
    ));

    let events = assert_contiguous_events(&store, room).await;
    assert_eq!(events.len(), 6);
    assert!(store.message(room, 99).await.unwrap().is_none());
}

pub(crate) async fn concurrent_appends_with_duplicates<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let room = group(&store, "g", alice, &[bob]).await; // seq 1

    // 50 sends, 30 distinct (sender, client id) pairs.
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            let sender = if i % 2 == 0 { alice } else { bob };
            let id = format!("m{}", i % 30);
            tokio::spawn(async move {
                let text = format!("text {i}");
                (
                    sender,
                    id.clone(),
                    store.append_message(new_message(room, sender, &text, &id)).await.unwrap(),
                )
            })
        })
        .collect();
    let mut new: BTreeMap<(UserId, String), Message> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for task in tasks {
        let (sender, id, appended) = task.await.unwrap();
        match appended {
            Appended::New { message, event, .. } => {
                assert_eq!(event.seq, message.seq);
                assert!(new.insert((sender, id), message).is_none(), "two new messages for one id");
            }
            Appended::Duplicate(original) => duplicates.push((sender, id, original)),
        }
    }
    // i and i + 30 share an id and a sender exactly when both are even or both odd: always
    // (30 is even), so 20 duplicates.
    assert_eq!(new.len(), 30);
    assert_eq!(duplicates.len(), 20);
    for (sender, id, original) in duplicates {
        assert_eq!(new[&(sender, id)], original);
    }
    let mut seqs: Vec<u64> = new.values().map(|m| m.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (2..=31).collect::<Vec<_>>());
    let stored = store.messages(room, Page::After(0), 100).await.unwrap();
    assert_eq!(stored.len(), 30);
    let distinct: HashSet<(UserId, String)> =
        stored.iter().map(|m| (m.sender_id, m.client_msg_id.clone())).collect();
    assert_eq!(distinct.len(), 30);
    assert_eq!(assert_contiguous_events(&store, room).await.len(), 31);
}

pub(crate) async fn group_commit_batches_and_isolates_failures<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let eve = user(&store, "eve").await;
    let room = store.create_group("g", alice).await.unwrap().id;
    // A failure after the seq was taken and the row written: it must be undone, and the rest
    // of its batch stored all the same.
    store.fail_appends_of_boom().await;
    let before = store.append_commits();

    let tasks: Vec<_> = (0..120)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                // Every sixth is refused (eve is no member), every tenth fails while being
                // written, and one pair repeats a client id.
                let sender = if i % 6 == 5 { eve } else { alice };
                let text = if i % 10 == 4 { format!("boom {i}") } else { format!("t{i}") };
                let id = if i == 7 { "m1".to_owned() } else { format!("m{i}") };
                store.append_message(new_message(room, sender, &text, &id)).await
            })
        })
        .collect();
    let (mut stored, mut refused, mut failed, mut duplicates) = (0, 0, 0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(Appended::New { .. }) => stored += 1,
            Ok(Appended::Duplicate(_)) => duplicates += 1,
            Err(StoreError::Forbidden) => refused += 1,
            Err(StoreError::Database(e)) if e.to_string().contains("boom") => failed += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((stored, duplicates, refused, failed), (87, 1, 20, 12));
    let commits = store.append_commits() - before;
    eprintln!("120 concurrent appends took {commits} commits");
    assert!((1..=30).contains(&commits), "{commits} commits for 120 appends");
    // No seq was lost to the failed ones, and none of them left a row.
    assert_eq!(assert_contiguous_events(&store, room).await.len(), 87);
    let messages = store.messages(room, Page::After(0), 1000).await.unwrap();
    assert_eq!(messages.len(), 87);
    assert!(messages.iter().all(|m| !m.text.starts_with("boom")));
    assert!(store.search(alice, "boom", 10).await.unwrap().is_empty());
}

pub(crate) async fn group_commit_respects_its_bound<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let room = store.create_group("g", alice).await.unwrap().id;
    let n = 2 * S::MAX_BATCH + 50;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store.append_message(new_message(room, alice, "x", &format!("m{i}"))).await
            })
        })
        .collect();
    for task in tasks {
        assert!(matches!(task.await.unwrap().unwrap(), Appended::New { .. }));
    }
    let commits = store.append_commits();
    eprintln!("{n} concurrent appends took {commits} commits");
    assert!(commits >= 3 && commits < n as u64 / 4, "{commits} commits for {n} appends");
    assert_eq!(assert_contiguous_events(&store, room).await.len(), n);
}

pub(crate) async fn concurrent_changes_of_every_kind_keep_the_stream_contiguous<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let mut others = Vec::new();
    for i in 0..10 {
        others.push(user(&store, &format!("u{i}")).await);
    }
    let room = store.create_group("g", alice).await.unwrap().id;
    let first = send(&store, room, alice, "react to me", "first").await; // seq 1
    let mut tasks = Vec::new();
    for (i, &other) in others.iter().enumerate() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.add_member(room, other, Role::Member).await.unwrap().unwrap();
            store.react(room, first.seq, other, "👍", true).await.unwrap();
            store.rename_room(room, &format!("name {i}")).await.unwrap();
            send(&store, room, other, "hi", "x").await;
            store.mark(room, other, Some(1000), Some(1000)).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(assert_contiguous_events(&store, room).await.len(), 1 + 10 * 4);
    let reactions = store.message(room, first.seq).await.unwrap().unwrap().reactions;
    assert_eq!(reactions.len(), 1);
    assert_eq!(reactions[0].user_ids.len(), 10);
}

pub(crate) async fn edit_delete_and_react<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let eve = user(&store, "eve").await;
    let room = group(&store, "g", alice, &[bob, carol]).await; // seqs 1, 2
    let m = send(&store, room, bob, "hello world", "b1").await; // 3

    // Edit: only the sender.
    assert!(matches!(store.edit_message(room, m.seq, alice, "x").await, Err(StoreError::Forbidden)));
    assert!(matches!(store.edit_message(room, 99, bob, "x").await, Err(StoreError::NotFound)));
    let (edited, ev) = store.edit_message(room, m.seq, bob, "hello there").await.unwrap();
    assert_eq!(ev.seq, 4);
    assert_eq!(edited.seq, 3);
    assert_eq!(edited.text, "hello there");
    assert!(edited.edited_at.is_some());
    assert_eq!(event(&ev), RoomEvent::Edit { message: edited.clone() });
    assert_eq!(store.message(room, 3).await.unwrap().unwrap(), edited);

    // Reactions, aggregated per emoji in order of first use.
    let (_, ev) = store.react(room, 3, alice, "👍", true).await.unwrap();
    assert_eq!(ev.seq, 5);
    store.react(room, 3, carol, "🎉", true).await.unwrap();
    let (reacted, ev) = store.react(room, 3, bob, "👍", true).await.unwrap();
    assert_eq!(
        reacted.reactions,
        vec![
            Reaction { emoji: "👍".into(), user_ids: vec![alice, bob] },
            Reaction { emoji: "🎉".into(), user_ids: vec![carol] },
        ]
    );
    assert_eq!(event(&ev), RoomEvent::Reaction { message: reacted.clone() });
    assert!(matches!(store.react(room, 3, alice, "👍", true).await, Err(StoreError::Conflict)));
    assert!(matches!(store.react(room, 3, alice, "🎉", false).await, Err(StoreError::NotFound)));
    assert!(matches!(store.react(room, 3, eve, "👍", true).await, Err(StoreError::Forbidden)));
    assert!(matches!(store.react(room, 99, alice, "👍", true).await, Err(StoreError::NotFound)));
    let (unreacted, ev) = store.react(room, 3, alice, "👍", false).await.unwrap();
    assert_eq!(ev.seq, 8);
    // Emojis are ordered by their oldest remaining reaction.
    assert_eq!(
        unreacted.reactions,
        vec![
            Reaction { emoji: "🎉".into(), user_ids: vec![carol] },
            Reaction { emoji: "👍".into(), user_ids: vec![bob] },
        ]
    );
    assert_eq!(store.message(room, 3).await.unwrap().unwrap().reactions, unreacted.reactions);

    // Delete: the sender or an admin/owner, not another member.
    let c = send(&store, room, carol, "from carol", "c1").await; // 9
    assert!(matches!(store.delete_message(room, c.seq, bob).await, Err(StoreError::Forbidden)));
    let (tomb, ev) = store.delete_message(room, c.seq, alice).await.unwrap(); // owner
    assert_eq!(ev.seq, 10);
    assert!(tomb.deleted);
    assert_eq!(tomb.text, "");
    assert_eq!(event(&ev), RoomEvent::Delete { message: tomb.clone() });
    let (tomb, _) = store.delete_message(room, 3, bob).await.unwrap(); // sender
    assert!(tomb.deleted && tomb.reactions.is_empty() && tomb.text.is_empty());
    // A tombstone is gone for every change.
    assert!(matches!(store.delete_message(room, 3, bob).await, Err(StoreError::NotFound)));
    assert!(matches!(store.edit_message(room, 3, bob, "back").await, Err(StoreError::NotFound)));
    assert!(matches!(store.react(room, 3, bob, "👍", true).await, Err(StoreError::NotFound)));
    // ... but it stays in the history.
    assert_eq!(store.message(room, 3).await.unwrap().unwrap(), tomb);

    // The stream replays every change in order.
    let kinds: Vec<&str> = assert_contiguous_events(&store, room)
        .await
        .iter()
        .map(|e| match event(e) {
            RoomEvent::Message { .. } => "message",
            RoomEvent::Edit { .. } => "edit",
            RoomEvent::Delete { .. } => "delete",
            RoomEvent::Reaction { .. } => "reaction",
            RoomEvent::RoomUpdated { .. } => "room",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "room", "room", "message", "edit", "reaction", "reaction", "reaction", "reaction", "message",
            "delete", "delete"
        ]
    );
}

pub(crate) async fn message_pages<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let room = store.create_group("g", alice).await.unwrap().id;
    for i in 1..=10 {
        send(&store, room, alice, &format!("m{i}"), &format!("c{i}")).await;
    }
    store.react(room, 9, alice, "👀", true).await.unwrap(); // seq 11
    let seqs = |ms: Vec<Message>| ms.iter().map(|m| m.seq).collect::<Vec<_>>();

    assert_eq!(seqs(store.messages(room, Page::Latest, 3).await.unwrap()), vec![8, 9, 10]);
    assert_eq!(seqs(store.messages(room, Page::Before(8), 3).await.unwrap()), vec![5, 6, 7]);
    assert_eq!(seqs(store.messages(room, Page::Before(3), 5).await.unwrap()), vec![1, 2]);
    assert_eq!(seqs(store.messages(room, Page::Before(1), 5).await.unwrap()), Vec::<u64>::new());
    assert_eq!(seqs(store.messages(room, Page::After(2), 3).await.unwrap()), vec![3, 4, 5]);
    assert_eq!(seqs(store.messages(room, Page::After(8), 5).await.unwrap()), vec![9, 10]);
    assert_eq!(seqs(store.messages(room, Page::After(10), 5).await.unwrap()), Vec::<u64>::new());
    assert_eq!(seqs(store.messages(room, Page::Latest, 100).await.unwrap()), (1..=10).collect::<Vec<_>>());
    assert!(store.messages(room, Page::Latest, 0).await.unwrap().is_empty());
    assert!(store.messages(9999, Page::Latest, 10).await.unwrap().is_empty());

    let page = store.messages(room, Page::Latest, 3).await.unwrap();
    assert_eq!(page[0].text, "m8");
    assert_eq!(page[1].reactions, vec![Reaction { emoji: "👀".into(), user_ids: vec![alice] }]);
    assert!(page[2].reactions.is_empty());
}

pub(crate) async fn events_after<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let room = group(&store, "g", alice, &[bob]).await;
    let other = group(&store, "h", alice, &[bob]).await;
    for i in 0..5 {
        send(&store, room, alice, "x", &format!("r{i}")).await;
        send(&store, other, bob, "y", &format!("o{i}")).await;
    }
    let all = store.events_after(room, 0, 100).await.unwrap();
    assert_eq!(all.len(), 6);
    assert!(all.iter().all(|e| e.room_id == room));
    let tail = store.events_after(room, 3, 100).await.unwrap();
    assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5, 6]);
    assert_eq!(tail, all[3..].to_vec());
    let limited = store.events_after(room, 1, 2).await.unwrap();
    assert_eq!(limited.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert!(store.events_after(room, 6, 100).await.unwrap().is_empty());
    assert!(store.events_after(room, 0, 0).await.unwrap().is_empty());
    assert!(store.events_after(9999, 0, 10).await.unwrap().is_empty());
    // The JSON is the event that was returned when the change was made.
    match event(&all[5]) {
        RoomEvent::Message { message } => {
            assert_eq!((message.seq, message.client_msg_id.as_str()), (6, "r4"))
        }
        other => panic!("{other:?}"),
    }
    let json: serde_json::Value = serde_json::from_str(&all[5].json).unwrap();
    assert_eq!(json["type"], "message");
}

pub(crate) async fn markers_are_monotonic_and_unread<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let eve = user(&store, "eve").await;
    let room = store.dm(alice, bob).await.unwrap().id;
    for i in 1..=6 {
        send(&store, room, if i <= 4 { alice } else { bob }, "x", &format!("c{i}")).await;
    }
    // bob: 4 unread from alice; alice: 2 from bob.
    assert_eq!(store.unread(room, bob).await.unwrap(), 4);
    assert_eq!(store.unread(room, alice).await.unwrap(), 2);
    assert!(matches!(store.unread(room, eve).await, Err(StoreError::NotFound)));
    // The same counts for the whole room in one read.
    let all = store.unread_by_member(room).await.unwrap();
    assert_eq!(all, vec![(alice, "alice".to_string(), 2), (bob, "bob".to_string(), 4)]);

    assert_eq!(store.mark(room, bob, Some(3), None).await.unwrap(), (3, 0));
    assert_eq!(store.mark(room, bob, None, Some(2)).await.unwrap(), (3, 2));
    assert_eq!(store.unread(room, bob).await.unwrap(), 2);
    // Older markers do not move them back.
    assert_eq!(store.mark(room, bob, Some(1), Some(1)).await.unwrap(), (3, 2));
    assert_eq!(store.mark(room, bob, None, None).await.unwrap(), (3, 2));
    // Delivered is at least read.
    assert_eq!(store.mark(room, bob, None, Some(5)).await.unwrap(), (5, 5));
    // Never beyond the stream.
    assert_eq!(store.mark(room, bob, Some(100), Some(100)).await.unwrap(), (6, 6));
    assert_eq!(store.unread(room, bob).await.unwrap(), 0);
    let member = store.members(room).await.unwrap().into_iter().find(|m| m.user.id == bob).unwrap();
    assert_eq!((member.delivered_seq, member.read_seq), (6, 6));
    assert!(matches!(store.mark(room, eve, Some(1), None).await, Err(StoreError::NotFound)));

    // Deleted messages are not unread.
    store.mark(room, alice, None, Some(4)).await.unwrap();
    assert_eq!(store.unread(room, alice).await.unwrap(), 2);
    store.delete_message(room, 5, bob).await.unwrap();
    assert_eq!(store.unread(room, alice).await.unwrap(), 1);
}

pub(crate) async fn rooms_of_summaries<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    assert!(store.rooms_of(alice).await.unwrap().is_empty());

    let g = group(&store, "g", alice, &[bob]).await;
    let dm = store.dm(alice, carol).await.unwrap().id;
    let empty = store.create_group("empty", alice).await.unwrap().id;
    tokio::time::sleep(Duration::from_millis(5)).await;
    send(&store, g, bob, "one", "b1").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    send(&store, dm, carol, "psst", "c1").await;
    send(&store, dm, carol, "secret", "c2").await;
    store.react(dm, 2, alice, "❤️", true).await.unwrap();

    let summaries = store.rooms_of(alice).await.unwrap();
    let order: Vec<RoomId> = summaries.iter().map(|s| s.room.id).collect();
    assert_eq!(order, vec![dm, g, empty], "newest activity first");

    let s_dm = &summaries[0];
    assert_eq!(s_dm.room.kind, RoomKind::Dm);
    assert_eq!(s_dm.role, Role::Member);
    assert_eq!(s_dm.unread, 2);
    let last = s_dm.last_message.as_ref().unwrap();
    assert_eq!((last.seq, last.text.as_str()), (2, "secret"));
    assert_eq!(last.reactions, vec![Reaction { emoji: "❤️".into(), user_ids: vec![alice] }]);
    assert_eq!(s_dm.members.iter().map(|m| m.user.id).collect::<Vec<_>>(), vec![alice, carol]);

    let s_g = &summaries[1];
    assert_eq!(s_g.role, Role::Owner);
    assert_eq!(s_g.unread, 1);
    assert_eq!(s_g.last_message.as_ref().unwrap().text, "one");
    assert_eq!(s_g.members.len(), 2);
    assert_eq!(s_g.room.last_seq, 2);

    let s_empty = &summaries[2];
    assert!(s_empty.last_message.is_none());
    assert_eq!(s_empty.unread, 0);
    assert_eq!(s_empty.members.len(), 1);

    // The last message may be a tombstone: shown as deleted, not unread.
    store.delete_message(dm, 2, carol).await.unwrap();
    let summaries = store.rooms_of(alice).await.unwrap();
    let last = summaries[0].last_message.as_ref().unwrap();
    assert!(last.deleted && last.text.is_empty() && last.reactions.is_empty());
    assert_eq!(summaries[0].unread, 1);

    // Bob sees only the group.
    let bobs = store.rooms_of(bob).await.unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!((bobs[0].room.id, bobs[0].role, bobs[0].unread), (g, Role::Member, 0));
}

/// A user's notifications are bounded: each beyond `notifications_per_user` drops the oldest.
pub(crate) async fn notifications_are_bounded_per_user<S: TestStore>(store: S) {
    let limits = StoreLimits { notifications_per_user: 3, ..StoreLimits::default() };
    let store = store.with_limits(limits);
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    store.add_notification(bob, "mention", None, None, &json!(null)).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(store.add_notification(alice, "mention", None, Some(i), &json!(null)).await.unwrap().id);
    }
    let kept: Vec<i64> = store.notifications(alice, 100).await.unwrap().iter().map(|n| n.id).collect();
    assert_eq!(kept, ids[7..].iter().rev().copied().collect::<Vec<_>>());
    assert_eq!(store.notifications(bob, 100).await.unwrap().len(), 1);
}

pub(crate) async fn notifications<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let room = store.create_group("g", alice).await.unwrap().id;

    let n1 =
        store.add_notification(alice, "mention", Some(room), Some(3), &json!({"from": "bob"})).await.unwrap();
    assert_eq!((n1.kind.as_str(), n1.room_id, n1.seq, n1.read), ("mention", Some(room), Some(3), false));
    let n2 = store.add_notification(alice, "invite", None, None, &json!({"room": "x"})).await.unwrap();
    let n3 = store.add_notification(alice, "message", Some(room), Some(4), &json!({})).await.unwrap();
    let b1 = store.add_notification(bob, "message", None, None, &json!(null)).await.unwrap();
    assert!(matches!(
        store.add_notification(9999, "x", None, None, &json!({})).await,
        Err(StoreError::NotFound)
    ));

    let list = store.notifications(alice, 10).await.unwrap();
    assert_eq!(list, vec![n3.clone(), n2.clone(), n1.clone()], "newest first");
    assert_eq!(store.notifications(alice, 2).await.unwrap().len(), 2);

    // Marking some: another user's id is ignored.
    store.read_notifications(alice, &[n1.id, b1.id]).await.unwrap();
    let read: Vec<bool> = store.notifications(alice, 10).await.unwrap().iter().map(|n| n.read).collect();
    assert_eq!(read, vec![false, false, true]);
    assert!(!store.notifications(bob, 10).await.unwrap()[0].read);
    // Marking all.
    store.read_notifications(alice, &[]).await.unwrap();
    assert!(store.notifications(alice, 10).await.unwrap().iter().all(|n| n.read));
    assert!(!store.notifications(bob, 10).await.unwrap()[0].read);
    assert_eq!(store.notifications(bob, 10).await.unwrap()[0].payload, json!(null));
}

pub(crate) async fn search_is_scoped_and_safe<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let eve = user(&store, "eve").await;
    let team = group(&store, "team", alice, &[bob]).await;
    let dm = store.dm(alice, bob).await.unwrap().id;
    let eves = store.create_group("eve's", eve).await.unwrap().id;
    send(&store, team, alice, "The deployment is scheduled for Friday", "a1").await;
    send(&store, dm, bob, "secret deployment plans", "b1").await;
    send(&store, eves, eve, "my own deployment notes", "e1").await;
    send(&store, team, bob, "Café crème at noon?", "b2").await;

    let hits = store.search(alice, "deployment", 10).await.unwrap();
    assert_eq!(hits.len(), 2);
    // Newest first.
    assert_eq!((hits[0].room_id, hits[0].room_name.as_str(), hits[0].sender.as_str()), (dm, "", "bob"));
    assert_eq!(hits[0].snippet, "secret [deployment] plans");
    assert_eq!((hits[1].room_id, hits[1].room_name.as_str(), hits[1].seq), (team, "team", 2));
    assert_eq!(hits[1].snippet, "The [deployment] is scheduled for Friday");
    assert!(hits[1].created_at > 0);

    // A non-member never finds others' messages.
    let eve_hits = store.search(eve, "deployment", 10).await.unwrap();
    assert_eq!(eve_hits.len(), 1);
    assert_eq!(eve_hits[0].room_id, eves);
    assert!(store.search(eve, "secret", 10).await.unwrap().is_empty());
    assert!(store.search(eve, "friday", 10).await.unwrap().is_empty());

    // Case, diacritics, several words, prefix of the last one.
    assert_eq!(store.search(alice, "FRIDAY", 10).await.unwrap().len(), 1);
    assert_eq!(store.search(bob, "cafe creme", 10).await.unwrap().len(), 1);
    assert_eq!(store.search(alice, "deployment sched", 10).await.unwrap().len(), 1);
    assert_eq!(store.search(alice, "deploy", 10).await.unwrap().len(), 2);
    assert_eq!(store.search(alice, "deployment", 1).await.unwrap().len(), 1);
    assert!(store.search(alice, "deployment", 0).await.unwrap().is_empty());

    // FTS syntax never surfaces as an error.
    for query in [
        "",
        "   ",
        "!!!",
        "\"",
        "\"\"",
        "*",
        "(",
        ")",
        "AND",
        "deployment AND",
        "OR OR",
        "NOT deployment",
        "NEAR(a b",
        "col:deployment",
        "^deployment",
        "deployment\"",
        "-deployment",
        "+",
        "{text}: x",
        "💥",
    ] {
        let result = store.search(alice, query, 10).await;
        assert!(result.is_ok(), "{query:?}: {result:?}");
    }
    assert!(store.search(alice, "?!.,;", 10).await.unwrap().is_empty());
    assert_eq!(store.search(alice, "\"deployment\"", 10).await.unwrap().len(), 2);
    assert_eq!(store.search(alice, "(deployment", 10).await.unwrap().len(), 2);

    // Edits re-index; deletes un-index.
    store.edit_message(team, 2, alice, "The rollout is scheduled for Monday").await.unwrap();
    assert_eq!(store.search(alice, "deployment", 10).await.unwrap().len(), 1);
    let rollout = store.search(alice, "rollout", 10).await.unwrap();
    assert_eq!(rollout.len(), 1);
    assert_eq!(rollout[0].snippet, "The [rollout] is scheduled for Monday");
    store.delete_message(dm, 1, bob).await.unwrap();
    assert!(store.search(alice, "deployment", 10).await.unwrap().is_empty());
    assert!(store.search(alice, "secret", 10).await.unwrap().is_empty());

    // A member who leaves no longer finds the room's messages.
    assert_eq!(store.search(bob, "rollout", 10).await.unwrap().len(), 1);
    store.remove_member(team, bob).await.unwrap();
    assert!(store.search(bob, "rollout", 10).await.unwrap().is_empty());

    store.check_search_index().await;
}

/// Checks that `unread`, `unread_by_member` and `rooms_of` all agree with a recount for every
/// member of every room, and that the members listed in `expected` have those counts.
pub(crate) async fn check_unread<S: TestStore>(store: &S, expected: &[(RoomId, UserId, u64)]) {
    let recount = store.recount_unread().await;
    let mut rooms: BTreeMap<RoomId, Vec<(UserId, u64)>> = BTreeMap::new();
    let mut users: BTreeMap<UserId, BTreeMap<RoomId, u64>> = BTreeMap::new();
    for (&(room, user), &count) in &recount {
        assert_eq!(store.unread(room, user).await.unwrap(), count, "unread of user {user} in room {room}");
        rooms.entry(room).or_default().push((user, count));
        users.entry(user).or_default().insert(room, count);
    }
    for (room, counts) in rooms {
        let by_member: Vec<(UserId, u64)> =
            store.unread_by_member(room).await.unwrap().into_iter().map(|(id, _, n)| (id, n)).collect();
        assert_eq!(by_member, counts, "unread_by_member of room {room}");
    }
    for (user, counts) in users {
        let listed: BTreeMap<RoomId, u64> =
            store.rooms_of(user).await.unwrap().iter().map(|s| (s.room.id, s.unread)).collect();
        assert_eq!(listed, counts, "rooms_of of user {user}");
    }
    for &(room, user, count) in expected {
        assert_eq!(recount.get(&(room, user)), Some(&count), "expected unread of user {user} in room {room}");
    }
}

pub(crate) async fn unread_counters_match_a_recount<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let dave = user(&store, "dave").await;
    let g = group(&store, "g", alice, &[bob, carol]).await; // seqs 1, 2
    let dm = store.dm(alice, bob).await.unwrap().id;
    let note = store.dm(dave, dave).await.unwrap().id;
    check_unread(&store, &[(g, alice, 0), (g, bob, 0), (g, carol, 0), (dm, alice, 0), (note, dave, 0)]).await;

    // Sends: unread for everyone but the sender.
    send(&store, g, alice, "a1", "a1").await; // 3
    check_unread(&store, &[(g, alice, 0), (g, bob, 1), (g, carol, 1)]).await;
    send(&store, g, bob, "b1", "b1").await; // 4
    check_unread(&store, &[(g, alice, 1), (g, bob, 1), (g, carol, 2)]).await;
    send(&store, g, carol, "c1", "c1").await; // 5
    check_unread(&store, &[(g, alice, 2), (g, bob, 2), (g, carol, 2)]).await;
    send(&store, g, alice, "a2", "a2").await; // 6
    check_unread(&store, &[(g, alice, 2), (g, bob, 3), (g, carol, 3)]).await;
    send(&store, dm, bob, "d1", "d1").await; // dm 1
    send(&store, dm, bob, "d2", "d2").await; // dm 2
    send(&store, note, dave, "to self", "n1").await;
    check_unread(&store, &[(dm, alice, 2), (dm, bob, 0), (note, dave, 0), (g, bob, 3)]).await;
    // A duplicate stores nothing, so counts nothing.
    store.append_message(new_message(g, alice, "a2 again", "a2")).await.unwrap();
    check_unread(&store, &[(g, bob, 3), (g, carol, 3)]).await;

    // Marks: partial, older (no move), delivered only, beyond the stream.
    assert_eq!(store.mark(g, bob, None, Some(4)).await.unwrap(), (4, 4));
    check_unread(&store, &[(g, bob, 2)]).await;
    assert_eq!(store.mark(g, bob, None, Some(3)).await.unwrap(), (4, 4));
    check_unread(&store, &[(g, bob, 2)]).await;
    assert_eq!(store.mark(g, bob, Some(6), None).await.unwrap(), (6, 4));
    check_unread(&store, &[(g, bob, 2)]).await;
    assert_eq!(store.mark(g, carol, None, Some(100)).await.unwrap(), (6, 6));
    check_unread(&store, &[(g, carol, 0), (g, bob, 2), (g, alice, 2)]).await;
    store.mark(dm, alice, None, Some(1)).await.unwrap();
    check_unread(&store, &[(dm, alice, 1)]).await;

    // Deletes: off the counts of those who had not read it, once.
    store.delete_message(g, 5, alice).await.unwrap(); // carol's c1, by the owner; seq 7
    check_unread(&store, &[(g, alice, 1), (g, bob, 1), (g, carol, 0)]).await;
    assert!(matches!(store.delete_message(g, 5, alice).await, Err(StoreError::NotFound)));
    assert!(matches!(store.delete_message(g, 5, carol).await, Err(StoreError::NotFound)));
    check_unread(&store, &[(g, alice, 1), (g, bob, 1), (g, carol, 0)]).await;
    // Read by carol (and by bob, its sender), unread for alice.
    store.delete_message(g, 4, bob).await.unwrap(); // seq 8
    check_unread(&store, &[(g, alice, 0), (g, bob, 1), (g, carol, 0)]).await;
    store.delete_message(dm, 2, bob).await.unwrap();
    check_unread(&store, &[(dm, alice, 0), (dm, bob, 0)]).await;
    // Edits and reactions change no count.
    store.edit_message(g, 6, alice, "a2 edited").await.unwrap(); // 9
    store.react(g, 6, carol, "👍", true).await.unwrap(); // 10
    check_unread(&store, &[(g, alice, 0), (g, bob, 1), (g, carol, 0)]).await;

    // A member added later starts at 0, and older messages never count for them.
    store.add_member(g, dave, Role::Member).await.unwrap().unwrap(); // 11
    check_unread(&store, &[(g, dave, 0)]).await;
    send(&store, g, carol, "c2", "c2").await; // 12
    check_unread(&store, &[(g, alice, 1), (g, bob, 2), (g, carol, 0), (g, dave, 1)]).await;
    store.delete_message(g, 3, alice).await.unwrap(); // a1, before dave joined; 13
    check_unread(&store, &[(g, alice, 1), (g, bob, 2), (g, carol, 0), (g, dave, 1)]).await;
    store.delete_message(g, 6, alice).await.unwrap(); // a2, read by carol only; 14
    check_unread(&store, &[(g, alice, 1), (g, bob, 1), (g, carol, 0), (g, dave, 1)]).await;
    store.mark(g, dave, Some(1000), Some(1000)).await.unwrap();
    check_unread(&store, &[(g, dave, 0)]).await;
    // Leaving and coming back: the history is not unread again.
    store.remove_member(g, carol).await.unwrap();
    send(&store, g, bob, "while carol is away", "b2").await;
    check_unread(&store, &[(g, alice, 2), (g, dave, 1)]).await;
    store.add_member(g, carol, Role::Member).await.unwrap().unwrap();
    check_unread(&store, &[(g, carol, 0), (g, alice, 2), (g, bob, 1), (g, dave, 1)]).await;
    // The messages of a member who left still count.
    store.remove_member(g, bob).await.unwrap();
    check_unread(&store, &[(g, alice, 2), (g, carol, 0), (g, dave, 1)]).await;
    store.add_member(g, bob, Role::Member).await.unwrap().unwrap();

    // Group commit: concurrent sends (some failing half-way, after the counts
    // were taken) and marks, in shared transactions.
    store.fail_appends_of_boom().await;
    let senders = [alice, bob, carol, dave];
    let tasks: Vec<_> = (0..80)
        .map(|i| {
            let store = store.clone();
            let sender = senders[i % senders.len()];
            tokio::spawn(async move {
                if i % 13 == 0 {
                    store.mark(g, sender, None, Some(1000)).await.unwrap();
                }
                let text = if i % 7 == 3 { format!("boom {i}") } else { format!("t{i}") };
                store.append_message(new_message(g, sender, &text, &format!("x{i}"))).await.is_ok()
            })
        })
        .collect();
    let mut stored = 0;
    for task in tasks {
        stored += usize::from(task.await.unwrap());
    }
    assert_eq!(stored, 80 - 11);
    check_unread(&store, &[]).await;
    let counts = store.recount_unread().await;
    assert!(senders.iter().all(|&u| counts[&(g, u)] > 0), "{counts:?}");

    // Marking up to the latest empties every count.
    for user in senders {
        store.mark(g, user, None, Some(u64::MAX)).await.unwrap();
    }
    store.mark(dm, alice, None, Some(u64::MAX)).await.unwrap();
    check_unread(&store, &[]).await;
    assert!(store.recount_unread().await.values().all(|&n| n == 0));
}

pub(crate) async fn a_new_message_reports_the_other_members_unread_counts<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let room = group(&store, "g", alice, &[bob, carol]).await;
    let appended = |a: Appended| match a {
        Appended::New { unread, .. } => unread,
        Appended::Duplicate(_) => panic!("not a duplicate"),
    };
    let others = |sender: UserId, all: Vec<(UserId, String, u64)>| -> Vec<(UserId, u64)> {
        all.into_iter().filter(|(id, ..)| *id != sender).map(|(id, _, n)| (id, n)).collect()
    };

    let unread = appended(store.append_message(new_message(room, alice, "one", "a-1")).await.unwrap());
    assert_eq!(unread, vec![(bob, 1), (carol, 1)]);
    let seq = store.room(room).await.unwrap().unwrap().last_seq;
    store.mark(room, bob, None, Some(seq)).await.unwrap();
    let unread = appended(store.append_message(new_message(room, carol, "two", "c-1")).await.unwrap());
    assert_eq!(unread, vec![(alice, 1), (bob, 1)]);
    assert_eq!(unread, others(carol, store.unread_by_member(room).await.unwrap()));
}

pub(crate) async fn refused_appends_take_no_seq<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let eve = user(&store, "eve").await;
    let room = group(&store, "g", alice, &[]).await;
    let first = send(&store, room, alice, "one", "a-1").await;
    // Not a member, a reply to nothing, an unknown room: refused, nothing taken.
    assert!(matches!(
        store.append_message(new_message(room, eve, "hi", "e-1")).await,
        Err(StoreError::Forbidden)
    ));
    let bad_reply = NewMessage { reply_to: Some(99), ..new_message(room, alice, "re", "a-2") };
    assert!(matches!(store.append_message(bad_reply).await, Err(StoreError::NotFound)));
    assert!(matches!(
        store.append_message(new_message(room + 1, alice, "x", "")).await,
        Err(StoreError::NotFound)
    ));
    // A retry takes nothing either, and answers with the original.
    match store.append_message(new_message(room, alice, "one", "a-1")).await.unwrap() {
        Appended::Duplicate(original) => assert_eq!(original.seq, first.seq),
        Appended::New { .. } => panic!("a retry stored twice"),
    }
    let second = send(&store, room, alice, "two", "a-3").await;
    assert_eq!(second.seq, first.seq + 1, "seqs stay contiguous");
    assert_eq!(store.room(room).await.unwrap().unwrap().last_seq, second.seq);
}

pub(crate) async fn reactions_are_bounded_per_user_and_per_message<S: TestStore>(store: S) {
    let store = store.with_limits(StoreLimits {
        reactions_per_user: 3,
        distinct_reactions: 4,
        ..StoreLimits::default()
    });
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let room = group(&store, "g", alice, &[bob]).await;
    let m = send(&store, room, bob, "react to me", "b1").await;
    for emoji in ["a", "b", "c"] {
        store.react(room, m.seq, alice, emoji, true).await.unwrap();
    }
    // Alice's fourth: over her own bound.
    assert!(matches!(store.react(room, m.seq, alice, "d", true).await, Err(StoreError::LimitExceeded(_))));
    // Bob may add a fourth distinct one, not a fifth; joining an existing one is always fine.
    store.react(room, m.seq, bob, "d", true).await.unwrap();
    assert!(matches!(store.react(room, m.seq, bob, "e", true).await, Err(StoreError::LimitExceeded(_))));
    store.react(room, m.seq, bob, "a", true).await.unwrap();
    // Removing one frees a place; refusals wrote nothing.
    store.react(room, m.seq, alice, "c", false).await.unwrap();
    store.react(room, m.seq, alice, "d", true).await.unwrap();
    let reactions = store.message(room, m.seq).await.unwrap().unwrap().reactions;
    let emojis: Vec<&str> = reactions.iter().map(|r| r.emoji.as_str()).collect();
    assert_eq!(emojis, ["a", "b", "d"]);
    assert_contiguous_events(&store, room).await;
}

/// Text its author edited away or deleted is nowhere to be read: not in the room's event
/// log (history, recovery, polls replay it), not in search, not in the notifications that
/// quoted it, and (where the backend can tell) not in the database's files.
pub(crate) async fn edited_and_deleted_text_is_redacted_everywhere<S: TestStore>(store: S) {
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let room = group(&store, "g", alice, &[bob]).await;
    const EDITED_AWAY: &str = "Quetzalcoatl-first-draft-4711";
    const DELETED: &str = "Xylophone-regret-0815";
    let m = send(&store, room, alice, &format!("hey @bob {EDITED_AWAY}"), "a1").await;
    store.react(room, m.seq, bob, "👍", true).await.unwrap();
    store
        .add_notification(
            bob,
            "mention",
            Some(room),
            Some(m.seq),
            &json!({"from": "alice", "preview": m.text}),
        )
        .await
        .unwrap();
    let (edited, _) = store.edit_message(room, m.seq, alice, "hey @bob second thoughts").await.unwrap();
    // Long enough to spill into overflow pages, which a delete frees whole.
    let d = send(&store, room, alice, &format!("@bob {DELETED} {}", "and more ".repeat(800)), "a2").await;
    store
        .add_notification(
            bob,
            "mention",
            Some(room),
            Some(d.seq),
            &json!({"from": "alice", "preview": d.text}),
        )
        .await
        .unwrap();
    store.react(room, d.seq, bob, "🎉", true).await.unwrap();
    store.delete_message(room, d.seq, alice).await.unwrap();

    // The log keeps every offset, and each event of a message carries its text as it is now.
    let events = assert_contiguous_events(&store, room).await;
    for e in &events {
        assert!(!e.json.contains(EDITED_AWAY) && !e.json.contains(DELETED), "seq {}: {}", e.seq, e.json);
    }
    let first = events.iter().find(|e| e.seq == m.seq).unwrap();
    let as_sent = Message { edited_at: None, reactions: vec![], ..edited.clone() };
    assert_eq!(event(first), RoomEvent::Message { message: as_sent });
    let deleted_event = events.iter().find(|e| e.seq == d.seq).unwrap();
    assert!(matches!(event(deleted_event), RoomEvent::Message { message } if message.text.is_empty()));
    for word in ["Quetzalcoatl", "4711", "Xylophone", "regret"] {
        assert!(store.search(bob, word, 10).await.unwrap().is_empty(), "search still finds {word}");
    }
    assert_eq!(store.search(bob, "thoughts", 10).await.unwrap().len(), 1);
    // A notification stored after the delete (the sender's task was slow) quotes nothing.
    let late = store
        .add_notification(
            bob,
            "mention",
            Some(room),
            Some(d.seq),
            &json!({"from": "alice", "preview": d.text}),
        )
        .await
        .unwrap();
    assert_eq!(late.payload, json!({"from": "alice", "preview": ""}));
    let notes = store.notifications(bob, 10).await.unwrap();
    assert_eq!(notes.len(), 3);
    for n in &notes {
        let text = n.payload.to_string();
        assert!(!text.contains(EDITED_AWAY) && !text.contains(DELETED), "{text}");
    }

    store.assert_text_gone_from_files(&[EDITED_AWAY, DELETED]).await;
}

pub(crate) async fn memberships_are_bounded_per_user_and_per_room<S: TestStore>(store: S) {
    let limits = StoreLimits { rooms_per_user: 2, members_per_room: 3, ..StoreLimits::default() };
    let store = store.with_limits(limits);
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let carol = user(&store, "carol").await;
    let dave = user(&store, "dave").await;
    let g1 = store.create_group("g1", alice).await.unwrap().id;
    store.dm(alice, bob).await.unwrap();
    // Alice is in two rooms: no third, whether she creates it, is invited or opens a DM.
    assert!(matches!(store.create_group("g3", alice).await, Err(StoreError::LimitExceeded(_))));
    assert!(matches!(store.dm(alice, carol).await, Err(StoreError::LimitExceeded(_))));
    let g2 = store.create_group("g2", carol).await.unwrap().id;
    assert!(matches!(store.add_member(g2, alice, Role::Member).await, Err(StoreError::LimitExceeded(_))));
    // The DM she has is still hers to open.
    store.dm(bob, alice).await.unwrap();
    // g1 takes three members, not four.
    store.add_member(g1, bob, Role::Member).await.unwrap();
    store.add_member(g1, carol, Role::Member).await.unwrap();
    assert!(matches!(store.add_member(g1, dave, Role::Member).await, Err(StoreError::LimitExceeded(_))));
    assert_eq!(store.members(g1).await.unwrap().len(), 3);
}
