//! The receiving side's order of room events. A room's events get their seq from the store,
//! in the transaction that records them, but the node that stored an event publishes it
//! through the broker on its own: with several nodes writing to a room, a node may receive
//! seq 7 (from one node) before seq 6 (from another), or miss one when its broker
//! connection broke, or when the node that stored it died before publishing it.
//!
//! So every stored event a node receives for a room with subscribers here goes through the
//! room's [`Sequencer`] entry before the hub delivers it: the next seq is delivered (with
//! those held back behind it), an old one is dropped, one after a gap is held back while
//! the missing ones arrive; if they have not after [`GAP_GRACE`], they are read from the
//! store and delivered in order. The hub therefore receives each room's events in seq order
//! with no gap, from a starting point (the *anchor*) every subscriber's answer covers.
//!
//! The anchor: an entry made by a subscriber's read of the room (its subscribe reply, a
//! poll) starts at the store's last seq, read once the entry exists and before any reader
//! reads further; one made by an arrival, before anyone here read the room, starts just
//! before that event. A reader's answer is read after the anchor, so it covers everything
//! up to it; everything after is delivered. Entries live only for the rooms with
//! subscribers on this node, for one [`Hub::generation`] of them.

use crate::stream::publication;
use hubbub_core::hub::Hub;
use hubbub_protocol::Publication;
use hubbub_store::{ChatStore, RoomId, StoreResult};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long a room's events after a gap wait for the missing ones to arrive before they are
/// read from the store. Events of one room published by different nodes overtake each
/// other by about a broker round trip; a missing event that has not come by then was lost
/// (a broker outage, a node that died between storing and publishing).
pub const GAP_GRACE: Duration = Duration::from_millis(20);

/// Most events held back behind a gap per room, in count and in bytes of data; beyond it,
/// arrivals are dropped and read back from the store with the gap.
const PENDING_MAX: usize = 256;
const PENDING_MAX_BYTES: usize = 256 << 10;

/// Events read from the store per query when filling a gap.
const FILL_BATCH: u32 = 64;

/// Waits between failed store reads while filling (doubling up to the maximum).
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Rooms kept before looking for entries whose subscribers are all gone.
const SWEEP_MIN: usize = 64;

/// Per room with subscribers on this node: the seq delivered last, and what arrived ahead.
pub struct Sequencer {
    hub: Arc<Hub>,
    store: Arc<dyn ChatStore>,
    rooms: Mutex<Rooms>,
}

struct Rooms {
    map: HashMap<RoomId, Arc<Room>>,
    /// The map's size at which entries without subscribers are swept out: twice what
    /// the last sweep left, so sweeping costs O(1) per entry made.
    sweep_at: usize,
}

struct Room {
    id: RoomId,
    channel: String,
    /// The hub's generation of the room's subscribers this entry serves.
    generation: u64,
    state: Mutex<State>,
    /// Held by the one reader reading the anchor from the store.
    anchoring: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// The seq delivered last (or the anchor); `None` until anchored.
    last: Option<u64>,
    /// Events that arrived ahead of a gap, by seq.
    pending: BTreeMap<u64, Publication>,
    pending_bytes: usize,
    /// The highest seq known to exist (arrived, held or not).
    seen: u64,
    /// A filler task is scheduled or running.
    filling: bool,
    /// Read the store up to its end, not only up to `seen` (after a broker outage).
    catch_up: bool,
    /// Replaced or forgotten: whoever holds it must not deliver any more.
    dead: bool,
}

impl State {
    fn behind(&self) -> bool {
        self.catch_up || self.last.is_some_and(|last| self.seen > last)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sequencer {
    pub fn new(hub: Arc<Hub>, store: Arc<dyn ChatStore>) -> Arc<Self> {
        Arc::new(Sequencer {
            hub,
            store,
            rooms: Mutex::new(Rooms { map: HashMap::new(), sweep_at: SWEEP_MIN }),
        })
    }

    /// Rooms with an entry (for tests and figures).
    pub fn len(&self) -> usize {
        lock(&self.rooms).map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The room's entry for `generation`, made (with `anchor` as its last seq) when there is
    /// none or the one there is from an earlier generation.
    fn room(&self, id: RoomId, channel: &str, generation: u64, anchor: Option<u64>) -> Arc<Room> {
        let mut rooms = lock(&self.rooms);
        if let Some(room) = rooms.map.get(&id) {
            if room.generation == generation {
                return room.clone();
            }
            lock(&room.state).dead = true;
        }
        if rooms.map.len() >= rooms.sweep_at {
            rooms.map.retain(|_, room| {
                let live = self.hub.generation(&room.channel) == Some(room.generation);
                if !live {
                    lock(&room.state).dead = true;
                }
                live
            });
            rooms.sweep_at = (rooms.map.len() * 2).max(SWEEP_MIN);
        }
        let state = State { last: anchor, seen: anchor.unwrap_or(0), ..Default::default() };
        let room = Arc::new(Room {
            id,
            channel: channel.to_owned(),
            generation,
            state: Mutex::new(state),
            anchoring: tokio::sync::Mutex::new(()),
        });
        rooms.map.insert(id, room.clone());
        room
    }

    fn forget(&self, id: RoomId) {
        if let Some(room) = lock(&self.rooms).map.remove(&id) {
            lock(&room.state).dead = true;
        }
    }

    /// A stored event of the room arrived from the broker: deliver it in order (now, or
    /// once the events before it are here). Never waits.
    pub fn arrive(self: &Arc<Self>, id: RoomId, channel: &str, publication: Publication) {
        let seq = publication.offset;
        let Some(generation) = self.hub.generation(channel) else {
            // Nobody here listens: nothing to deliver, nothing to keep.
            return self.forget(id);
        };
        loop {
            let room = self.room(id, channel, generation, Some(seq.saturating_sub(1)));
            let mut state = lock(&room.state);
            if state.dead {
                continue;
            }
            state.seen = state.seen.max(seq);
            match state.last {
                Some(last) if seq <= last => {}
                Some(last) if seq == last + 1 => {
                    self.deliver(&room, &mut state, publication);
                    self.drain(&room, &mut state);
                }
                _ => {
                    let bytes = publication.data.len();
                    if state.pending.len() < PENDING_MAX && state.pending_bytes + bytes <= PENDING_MAX_BYTES {
                        state.pending_bytes += bytes;
                        state.pending.insert(seq, publication);
                    }
                    self.start_filler(&room, &mut state, GAP_GRACE);
                }
            }
            return;
        }
    }

    /// Where this node's delivery of the room stands, for a reader of the room that has
    /// subscribed here (a subscriber, a waiting poll) and is about to read the store: the
    /// entry is anchored first, so everything after the returned seq reaches the hub, in
    /// order. `None` when nobody subscribed here (the reader answers from the store alone)
    /// or the room does not exist.
    pub async fn position(self: &Arc<Self>, id: RoomId, channel: &str) -> StoreResult<Option<u64>> {
        let Some(generation) = self.hub.generation(channel) else { return Ok(None) };
        loop {
            let room = self.room(id, channel, generation, None);
            {
                let state = lock(&room.state);
                if state.dead {
                    continue;
                }
                if let Some(last) = state.last {
                    return Ok(Some(last));
                }
            }
            let _anchoring = room.anchoring.lock().await;
            if let Some(last) = lock(&room.state).last {
                return Ok(Some(last));
            }
            let Some(top) = self.store.room(id).await?.map(|r| r.last_seq) else { return Ok(None) };
            let mut state = lock(&room.state);
            if state.dead {
                continue;
            }
            state.last = Some(top);
            state.seen = state.seen.max(top);
            self.drain(&room, &mut state);
            self.start_filler(&room, &mut state, GAP_GRACE);
            return Ok(Some(top));
        }
    }

    /// After a broker outage: delivers whatever the room's subscribers here missed, from the
    /// store, in order (in the background).
    pub fn resync(self: &Arc<Self>, id: RoomId, channel: &str) {
        let Some(generation) = self.hub.generation(channel) else { return self.forget(id) };
        let Some(room) = lock(&self.rooms).map.get(&id).filter(|r| r.generation == generation).cloned()
        else {
            // Nobody here has read the room or received an event of it since subscribing:
            // their reads come after the outage.
            return;
        };
        let mut state = lock(&room.state);
        if state.last.is_some() {
            state.catch_up = true;
            self.start_filler(&room, &mut state, Duration::ZERO);
        }
    }

    fn deliver(&self, room: &Room, state: &mut State, publication: Publication) {
        state.last = Some(publication.offset);
        self.hub.broadcast_publication(&room.channel, publication);
    }

    /// Delivers the held-back events that now follow, drops those already delivered.
    fn drain(&self, room: &Room, state: &mut State) {
        let Some(mut last) = state.last else { return };
        while let Some(entry) = state.pending.first_entry() {
            let seq = *entry.key();
            if seq > last + 1 {
                break;
            }
            let publication = entry.remove();
            state.pending_bytes -= publication.data.len();
            if seq == last + 1 {
                self.deliver(room, state, publication);
                last = seq;
            }
        }
    }

    fn start_filler(self: &Arc<Self>, room: &Arc<Room>, state: &mut State, grace: Duration) {
        if state.filling || !state.behind() {
            return;
        }
        state.filling = true;
        tokio::spawn(self.clone().fill(room.clone(), grace));
    }

    /// Reads the room's missing events from the store and delivers them with those held
    /// back, until the room is no longer behind (or its entry is gone).
    async fn fill(self: Arc<Self>, room: Arc<Room>, grace: Duration) {
        if !grace.is_zero() {
            tokio::time::sleep(grace).await;
        }
        let mut retry = RETRY_MIN;
        loop {
            let (after, seen) = {
                let mut state = lock(&room.state);
                match state.last {
                    Some(last) if !state.dead && state.behind() => (last, state.seen),
                    _ => {
                        state.filling = false;
                        return;
                    }
                }
            };
            let events = match self.store.events_after(room.id, after, FILL_BATCH).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(room = room.id, error = %e, "could not read a gap's events; retrying");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            };
            retry = RETRY_MIN;
            let mut state = lock(&room.state);
            if state.dead {
                return;
            }
            for event in &events {
                let Some(last) = state.last else { break };
                if event.seq != last + 1 {
                    continue;
                }
                match publication(event) {
                    Ok(p) => self.deliver(&room, &mut state, p),
                    Err(e) => {
                        tracing::error!(room = room.id, seq = event.seq, error = %e, "stored event skipped");
                        state.last = Some(event.seq);
                    }
                }
            }
            self.drain(&room, &mut state);
            if events.len() < FILL_BATCH as usize {
                // The store's end: caught up with it. Seqs known before the read began
                // but not in the store were never stored (the store is the truth): the
                // events held back after them go out rather than wait forever.
                state.catch_up = false;
                let last = state.last.unwrap_or(0);
                if seen > last {
                    tracing::error!(
                        room = room.id,
                        after = last,
                        seen,
                        "events announced but not in the store"
                    );
                    let skip_to = match state.pending.keys().next() {
                        Some(&next) if next <= seen => next - 1,
                        _ => seen,
                    };
                    state.last = Some(last.max(skip_to));
                    self.drain(&room, &mut state);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room_channel;
    use hubbub_core::hub::Connection;
    use hubbub_store::sqlite::SqliteStore;
    use hubbub_store::{Appended, NewMessage, StoredEvent};
    use std::time::Instant;

    /// A room with stored events, this node's sequencer, and one subscriber here.
    struct Fixture {
        store: Arc<dyn ChatStore>,
        hub: Arc<Hub>,
        sequencer: Arc<Sequencer>,
        room: RoomId,
        channel: String,
        sender: hubbub_store::UserId,
        conn: Arc<Connection>,
        sent: usize,
    }

    impl Fixture {
        async fn new() -> Fixture {
            let store: Arc<dyn ChatStore> = Arc::new(SqliteStore::open_in_memory().await.unwrap());
            let sender = store.create_user("ann", "hash").await.unwrap().id;
            let room = store.create_group("g", sender).await.unwrap().id;
            let hub = Arc::new(Hub::new());
            let channel = room_channel(room);
            let conn = Connection::new(1 << 20);
            hub.subscribe(&channel, &conn, false, false, true);
            let sequencer = Sequencer::new(hub.clone(), store.clone());
            Fixture { store, hub, sequencer, room, channel, sender, conn, sent: 0 }
        }

        /// Stores `n` messages (as other nodes would) and returns their events.
        async fn store_messages(&mut self, n: usize) -> Vec<StoredEvent> {
            let mut events = Vec::new();
            for _ in 0..n {
                self.sent += 1;
                let message = NewMessage {
                    room_id: self.room,
                    sender_id: self.sender,
                    text: format!("m{}", self.sent),
                    client_msg_id: format!("c{}", self.sent),
                    reply_to: None,
                };
                match self.store.append_message(message).await.unwrap() {
                    Appended::New { event, .. } => events.push(event),
                    Appended::Duplicate(_) => unreachable!("fresh ids"),
                }
            }
            events
        }

        fn arrive(&self, event: &StoredEvent) {
            self.sequencer.arrive(self.room, &self.channel, publication(event).unwrap());
        }

        /// Offsets of the publications queued for the subscriber so far.
        fn received(&self) -> Vec<u64> {
            let mut frames = Vec::new();
            while self.conn.outbox.drain_frames(&mut frames).is_some() {}
            frames
                .iter()
                .map(|f| {
                    let v: serde_json::Value = serde_json::from_slice(f).unwrap();
                    v["push"]["pub"]["offset"].as_u64().unwrap()
                })
                .collect()
        }

        /// Waits (at most 5 s) until the subscriber got `n` more publications.
        async fn receive(&self, n: usize) -> Vec<u64> {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut got = Vec::new();
            while got.len() < n {
                assert!(Instant::now() < deadline, "only {got:?} of {n} publications arrived");
                got.extend(self.received());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            got
        }
    }

    fn seqs(events: &[StoredEvent]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn out_of_order_arrivals_are_delivered_in_order_and_duplicates_dropped() {
        let mut f = Fixture::new().await;
        let top = f.sequencer.position(f.room, &f.channel).await.unwrap().unwrap();
        let events = f.store_messages(4).await;
        assert_eq!(seqs(&events), vec![top + 1, top + 2, top + 3, top + 4]);
        f.arrive(&events[2]);
        f.arrive(&events[1]);
        assert!(f.received().is_empty(), "held back behind the missing first one");
        f.arrive(&events[0]);
        assert_eq!(f.received(), seqs(&events[..3]));
        // Old and repeated arrivals are dropped; the next one goes straight through.
        f.arrive(&events[1]);
        f.arrive(&events[0]);
        f.arrive(&events[3]);
        f.arrive(&events[3]);
        assert_eq!(f.received(), vec![top + 4]);
    }

    #[tokio::test]
    async fn a_gap_that_does_not_close_is_filled_from_the_store() {
        let mut f = Fixture::new().await;
        let top = f.sequencer.position(f.room, &f.channel).await.unwrap().unwrap();
        let events = f.store_messages(5).await;
        // Only the last arrives: the node that stored the others died, or the broker lost them.
        let started = Instant::now();
        f.arrive(&events[4]);
        assert!(f.received().is_empty());
        assert_eq!(f.receive(5).await, (top + 1..=top + 5).collect::<Vec<_>>());
        assert!(started.elapsed() >= GAP_GRACE, "the missing ones had their grace to arrive");
        // Late arrivals of what the store gave are dropped.
        f.arrive(&events[1]);
        tokio::time::sleep(GAP_GRACE * 2).await;
        assert!(f.received().is_empty());
    }

    #[tokio::test]
    async fn many_shuffled_and_repeated_arrivals_with_losses_come_out_whole() {
        let mut f = Fixture::new().await;
        let top = f.sequencer.position(f.room, &f.channel).await.unwrap().unwrap();
        let events = f.store_messages(300).await;
        // A deterministic shuffle within windows of 16 (several nodes racing), every
        // seventh event lost and every fifth sent twice.
        let mut order: Vec<usize> = (0..events.len()).collect();
        let mut x: u64 = 0x9e37_79b9;
        for window in order.chunks_mut(16) {
            for i in (1..window.len()).rev() {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                window.swap(i, (x >> 33) as usize % (i + 1));
            }
        }
        for &i in &order {
            if i % 7 != 3 {
                f.arrive(&events[i]);
            }
            if i % 5 == 0 {
                f.arrive(&events[i]);
            }
        }
        let got = f.receive(events.len()).await;
        assert_eq!(got, (top + 1..=top + 300).collect::<Vec<_>>());
        tokio::time::sleep(GAP_GRACE * 2).await;
        assert!(f.received().is_empty(), "nothing twice");
    }

    #[tokio::test]
    async fn resync_delivers_what_the_broker_lost() {
        let mut f = Fixture::new().await;
        let top = f.sequencer.position(f.room, &f.channel).await.unwrap().unwrap();
        let events = f.store_messages(3).await;
        f.arrive(&events[0]);
        assert_eq!(f.received(), vec![top + 1]);
        // The other two never arrive and nothing follows them: only a resync finds them.
        f.sequencer.resync(f.room, &f.channel);
        assert_eq!(f.receive(2).await, vec![top + 2, top + 3]);
    }

    #[tokio::test]
    async fn the_first_arrival_anchors_a_room_nobody_here_read() {
        let mut f = Fixture::new().await;
        let events = f.store_messages(3).await;
        // No reader here read the room: its delivery starts at the first event that arrives.
        f.arrive(&events[1]);
        assert_eq!(f.received(), vec![events[1].seq]);
        f.arrive(&events[0]);
        f.arrive(&events[2]);
        assert_eq!(f.received(), vec![events[2].seq]);
        // A reader now is told what was delivered, so it reads nothing twice.
        assert_eq!(f.sequencer.position(f.room, &f.channel).await.unwrap(), Some(events[2].seq));
    }

    #[tokio::test]
    async fn rooms_without_subscribers_here_are_forgotten() {
        let mut f = Fixture::new().await;
        f.sequencer.position(f.room, &f.channel).await.unwrap();
        assert_eq!(f.sequencer.len(), 1);
        f.hub.unsubscribe(&f.channel, &f.conn);
        let events = f.store_messages(1).await;
        f.arrive(&events[0]);
        assert!(f.sequencer.is_empty(), "an arrival for nobody forgets the room");
        // A reader without a subscription here answers from the store alone.
        assert_eq!(f.sequencer.position(f.room, &f.channel).await.unwrap(), None);
        assert!(f.sequencer.is_empty());

        // Rooms whose subscribers left without a later arrival are swept out as others come.
        let conn = Connection::new(1 << 20);
        for room in 1000..1000 + 4 * SWEEP_MIN as i64 {
            let channel = room_channel(room);
            f.hub.subscribe(&channel, &conn, false, false, true);
            f.sequencer.arrive(room, &channel, publication(&events[0]).unwrap());
            f.hub.unsubscribe(&channel, &conn);
        }
        assert!(f.sequencer.len() <= SWEEP_MIN, "{} entries kept", f.sequencer.len());
    }

    #[tokio::test]
    async fn a_new_generation_of_subscribers_is_anchored_again() {
        let mut f = Fixture::new().await;
        f.sequencer.position(f.room, &f.channel).await.unwrap();
        // Everyone here leaves; events are stored meanwhile and never arrive (the node
        // stopped listening to the room).
        f.hub.unsubscribe(&f.channel, &f.conn);
        let events = f.store_messages(3).await;
        f.hub.subscribe(&f.channel, &f.conn, false, false, true);
        // The new subscriber's read is anchored at the store's top, not at the stale entry.
        assert_eq!(f.sequencer.position(f.room, &f.channel).await.unwrap(), Some(events[2].seq));
        let more = f.store_messages(1).await;
        f.arrive(&more[0]);
        assert_eq!(f.received(), vec![more[0].seq]);
    }
}
