//! A connection's bounded outgoing queue.
//!
//! Everything a connection sends (replies, pushes and instructions for the connection task
//! itself) goes through one queue, so a reply is never overtaken by a push queued after it.
//! The writer takes everything queued at once and writes it as one frame. The bound is in
//! bytes: a subscriber that cannot keep up overflows it and is disconnected as slow instead
//! of making the server's memory grow.

use bytes::Bytes;
use hubbub_protocol::Disconnect;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

/// Instructions for the connection task that owns the session, from elsewhere in the node.
#[derive(Debug)]
pub enum Control {
    /// Close the connection with this code.
    Disconnect(Disconnect),
    /// Subscribe the session to a channel on the server's behalf.
    Subscribe(String),
    /// Unsubscribe the session on the server's behalf.
    Unsubscribe(String),
    /// Commands for the session that arrived outside its own connection (`POST /emulation`).
    Commands(String),
}

#[derive(Debug)]
pub enum Outgoing {
    Frame(Bytes),
    Control(Control),
}

#[derive(Default)]
struct State {
    items: VecDeque<Outgoing>,
    bytes: usize,
    /// Set once the queue overflowed or was closed: nothing more is accepted.
    closed: bool,
}

pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    max_bytes: usize,
}

impl Outbox {
    pub fn new(max_bytes: usize) -> Self {
        Outbox { state: Mutex::new(State::default()), notify: Notify::new(), max_bytes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an encoded message. Returns false when the connection is closing, either
    /// already or because this message overflowed the queue (then the queued messages are
    /// dropped and a slow-consumer disconnect is queued instead).
    pub fn push(&self, frame: Bytes) -> bool {
        let mut s = self.lock();
        if s.closed {
            return false;
        }
        if s.bytes + frame.len() > self.max_bytes && !s.items.is_empty() {
            s.items.clear();
            s.bytes = 0;
            s.closed = true;
            s.items.push_back(Outgoing::Control(Control::Disconnect(Disconnect::SLOW)));
            drop(s);
            self.notify.notify_one();
            return false;
        }
        s.bytes += frame.len();
        s.items.push_back(Outgoing::Frame(frame));
        drop(s);
        self.notify.notify_one();
        true
    }

    /// Queues an instruction for the connection task. A disconnect closes the queue.
    pub fn control(&self, control: Control) {
        let mut s = self.lock();
        if s.closed {
            return;
        }
        if matches!(control, Control::Disconnect(_)) {
            s.closed = true;
        }
        s.items.push_back(Outgoing::Control(control));
        drop(s);
        self.notify.notify_one();
    }

    /// Moves everything queued into `out`.
    pub fn drain(&self, out: &mut Vec<Outgoing>) {
        let mut s = self.lock();
        out.extend(s.items.drain(..));
        s.bytes = 0;
    }

    /// Waits until something is queued (returns at once if something was queued since the
    /// last wait).
    pub async fn ready(&self) {
        self.notify.notified().await
    }

    /// Whether the queue accepts nothing more.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_turns_into_slow_disconnect() {
        let q = Outbox::new(10);
        assert!(q.push(Bytes::from_static(b"12345")));
        assert!(q.push(Bytes::from_static(b"12345")));
        assert!(!q.push(Bytes::from_static(b"1")));
        assert!(!q.push(Bytes::from_static(b"1")));
        let mut out = vec![];
        q.drain(&mut out);
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0], Outgoing::Control(Control::Disconnect(d)) if *d == Disconnect::SLOW));
    }

    #[test]
    fn one_big_message_passes_when_queue_is_empty() {
        let q = Outbox::new(4);
        assert!(q.push(Bytes::from_static(b"123456")));
    }
}
