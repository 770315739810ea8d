//! A connection's bounded outgoing queue.
//!
//! Everything a connection sends (replies, pushes and instructions for the connection task
//! itself) goes through one queue, so a reply is never overtaken by a push queued after it.
//! The writer takes everything queued at once and writes it as one frame. The bound is in
//! bytes: a subscriber that cannot keep up overflows it and is disconnected as slow instead
//! of making the server's memory grow. Commands posted for an emulation session
//! ([`Control::Commands`]) wait in the same queue and count toward the same bound: a client
//! that posts faster than its session's stream is read gets the same slow disconnect.

use bytes::Bytes;
use hubbub_protocol::Disconnect;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;
use std::task::{Poll, Waker};

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
    /// A frame in the session's protocol; counted in the queue's bytes until the connection
    /// task takes it.
    Commands(Bytes),
    /// The server API's `refresh`: the connection expires at `expire_at` (Unix seconds;
    /// `None`: never), or, with `expired`, now.
    Refresh { expired: bool, expire_at: Option<u64> },
    /// The subscription to this channel missed publications (the broker lost deliveries):
    /// make the client subscribe again and recover from the stream.
    Resubscribe(String),
    /// A proxy's answer to a refresh asked in the background (`proxy.rs`).
    Proxied(crate::proxy::Deferred),
}

impl Control {
    /// Bytes this instruction holds that the client chose (and could make large).
    fn bytes(&self) -> usize {
        match self {
            Control::Commands(text) => text.len(),
            _ => 0,
        }
    }
}

#[derive(Debug)]
enum Outgoing {
    Frame(Bytes),
    Control(Control),
}

#[derive(Default)]
struct State {
    items: VecDeque<Outgoing>,
    /// Bytes of the frames and posted commands in `items`.
    bytes: usize,
    /// Set once the queue overflowed or was closed: nothing more is accepted.
    closed: bool,
    /// Why it was closed (the disconnect queued then), for those refused afterwards.
    closed_by: Option<Disconnect>,
    /// The task waiting in [`Outbox::ready`]. Taken by the first push after it registered,
    /// so a burst of pushes (one per publication of a busy channel) wakes the writer once.
    waiter: Option<Waker>,
}

impl State {
    /// Takes the frames in front, up to and including the first instruction.
    fn take_frames(&mut self, frames: &mut Vec<Bytes>) -> Option<Control> {
        while let Some(item) = self.items.pop_front() {
            match item {
                Outgoing::Frame(frame) => {
                    self.bytes -= frame.len();
                    frames.push(frame);
                }
                Outgoing::Control(control) => {
                    self.bytes -= control.bytes();
                    return Some(control);
                }
            }
        }
        None
    }

    /// Whether `bytes` more would overflow the queue. One item alone always fits, however
    /// large (a message is bounded elsewhere): only a backlog overflows.
    fn overflows(&self, bytes: usize, max_bytes: usize) -> bool {
        self.bytes + bytes > max_bytes && !self.items.is_empty()
    }

    /// Drops what is queued and queues `disconnect` instead; nothing more is accepted.
    fn close_with(&mut self, disconnect: Disconnect) {
        self.items.clear();
        self.bytes = 0;
        self.closed = true;
        self.closed_by = Some(disconnect.clone());
        self.items.push_back(Outgoing::Control(Control::Disconnect(disconnect)));
    }
}

/// The queue. One task at a time waits on it (the connection's writer).
pub struct Outbox {
    state: Mutex<State>,
    max_bytes: usize,
}

impl Outbox {
    pub fn new(max_bytes: usize) -> Self {
        Outbox { state: Mutex::new(State::default()), max_bytes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends under the lock, then wakes the waiting writer outside it.
    fn enqueue(&self, item: Outgoing, mut s: std::sync::MutexGuard<'_, State>) {
        s.items.push_back(item);
        self.wake(s);
    }

    /// Wakes the waiting writer, outside the lock.
    fn wake(&self, mut s: std::sync::MutexGuard<'_, State>) {
        let waiter = s.waiter.take();
        drop(s);
        if let Some(waker) = waiter {
            waker.wake();
        }
    }

    /// Queues an encoded message. Returns false when the connection is closing, either
    /// already or because this message overflowed the queue (then the queued messages are
    /// dropped and a slow-consumer disconnect is queued instead).
    pub fn push(&self, frame: Bytes) -> bool {
        let mut s = self.lock();
        if s.closed {
            return false;
        }
        if s.overflows(frame.len(), self.max_bytes) {
            s.close_with(Disconnect::SLOW);
            self.wake(s);
            return false;
        }
        s.bytes += frame.len();
        self.enqueue(Outgoing::Frame(frame), s);
        true
    }

    /// Disconnects the connection as slow, as an overflow does: for deliveries kept aside
    /// for it elsewhere (a recovering subscriber's held publications) that exceed its budget.
    pub fn disconnect_slow(&self) {
        let mut s = self.lock();
        if !s.closed {
            s.close_with(Disconnect::SLOW);
            self.wake(s);
        }
    }

    /// Bytes of the frames queued now.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The queue's bound in bytes.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Queues an instruction for the connection task. A disconnect closes the queue.
    /// Instructions that come too late (the queue is closed) are dropped: the connection is
    /// ending anyway. See [`Outbox::try_control`] for a caller that must know.
    pub fn control(&self, control: Control) {
        let _ = self.try_control(control);
    }

    /// Queues an instruction, or says why the queue refused it: the disconnect that closed
    /// it, already or because this instruction overflowed it (posted commands count toward
    /// the bound; then the queue is dropped and a slow disconnect queued instead).
    pub fn try_control(&self, control: Control) -> Result<(), Disconnect> {
        let mut s = self.lock();
        if s.closed {
            return Err(s.closed_by.clone().unwrap_or(Disconnect::CONNECTION_CLOSED));
        }
        let bytes = control.bytes();
        if s.overflows(bytes, self.max_bytes) {
            s.close_with(Disconnect::SLOW);
            self.wake(s);
            return Err(Disconnect::SLOW);
        }
        if let Control::Disconnect(d) = &control {
            s.closed = true;
            s.closed_by = Some(d.clone());
        }
        s.bytes += bytes;
        self.enqueue(Outgoing::Control(control), s);
        Ok(())
    }

    /// Moves the queued frames into `frames`, in order, up to the first instruction, which
    /// it returns (what follows the instruction stays queued for the next call).
    pub fn drain_frames(&self, frames: &mut Vec<Bytes>) -> Option<Control> {
        self.lock().take_frames(frames)
    }

    /// Moves the queued frames into `frames`, in order, up to the first instruction, which
    /// stays queued. Returns whether an instruction is next (then nothing more can be taken
    /// from the queue until it is carried out, by [`Outbox::drain_frames`]).
    pub fn drain_leading_frames(&self, frames: &mut Vec<Bytes>) -> bool {
        let mut s = self.lock();
        match s.take_frames(frames) {
            Some(instruction) => {
                s.bytes += instruction.bytes();
                s.items.push_front(Outgoing::Control(instruction));
                true
            }
            None => false,
        }
    }

    /// Drops everything queued.
    pub fn clear(&self) {
        let mut s = self.lock();
        s.items.clear();
        s.bytes = 0;
    }

    /// Waits until something is queued (at once if something is). Cancel-safe.
    pub fn ready(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            let mut s = self.lock();
            if !s.items.is_empty() {
                return Poll::Ready(());
            }
            match &mut s.waiter {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
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
        let mut frames = vec![];
        let control = q.drain_frames(&mut frames);
        assert!(frames.is_empty());
        assert!(matches!(control, Some(Control::Disconnect(d)) if d == Disconnect::SLOW));
        assert!(q.drain_frames(&mut frames).is_none());
    }

    #[test]
    fn frames_after_an_instruction_wait_for_the_next_drain() {
        let q = Outbox::new(1 << 10);
        q.push(Bytes::from_static(b"a"));
        q.control(Control::Unsubscribe("c".into()));
        q.push(Bytes::from_static(b"b"));
        let mut frames = vec![];
        assert!(matches!(q.drain_frames(&mut frames), Some(Control::Unsubscribe(_))));
        assert_eq!(frames, vec![Bytes::from_static(b"a")]);
        frames.clear();
        assert!(q.drain_frames(&mut frames).is_none());
        assert_eq!(frames, vec![Bytes::from_static(b"b")]);
        // Leading frames only: the instruction stays for its owner.
        frames.clear();
        q.push(Bytes::from_static(b"c"));
        q.control(Control::Unsubscribe("c".into()));
        assert!(q.drain_leading_frames(&mut frames));
        assert!(q.drain_leading_frames(&mut frames));
        assert_eq!(frames, vec![Bytes::from_static(b"c")]);
        frames.clear();
        assert!(matches!(q.drain_frames(&mut frames), Some(Control::Unsubscribe(_))));
        assert!(!q.drain_leading_frames(&mut frames));
        // The byte count followed: a full queue's worth fits again.
        assert!(q.push(Bytes::from(vec![0u8; 1 << 10])));
    }

    #[tokio::test]
    async fn ready_wakes_the_waiting_task_once_per_burst() {
        let q = std::sync::Arc::new(Outbox::new(1 << 10));
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.ready().await }
        });
        tokio::task::yield_now().await;
        q.push(Bytes::from_static(b"a"));
        q.push(Bytes::from_static(b"b"));
        waiter.await.unwrap();
        // Ready at once while something is queued.
        q.ready().await;
        q.clear();
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), q.ready()).await;
        assert!(pending.is_err(), "nothing queued: not ready");
    }

    #[test]
    fn posted_commands_count_toward_the_bound() {
        let q = Outbox::new(10);
        assert!(q.try_control(Control::Commands(Bytes::from_static(b"123456"))).is_ok());
        // Taken back out and put back: still counted once.
        let mut frames = vec![];
        assert!(q.drain_leading_frames(&mut frames));
        assert!(q.push(Bytes::from_static(b"1234")));
        assert_eq!(q.try_control(Control::Commands(Bytes::from_static(b"1"))), Err(Disconnect::SLOW));
        assert_eq!(q.try_control(Control::Commands(Bytes::from_static(b"1"))), Err(Disconnect::SLOW));
        assert!(matches!(q.drain_frames(&mut frames), Some(Control::Disconnect(d)) if d == Disconnect::SLOW));
        // Taken out for good: the bytes are free again.
        let q = Outbox::new(10);
        assert!(q.try_control(Control::Commands(Bytes::from_static(b"123456789"))).is_ok());
        assert!(matches!(q.drain_frames(&mut frames), Some(Control::Commands(_))));
        assert!(q.try_control(Control::Commands(Bytes::from_static(b"123456789"))).is_ok());
        // A disconnect is what later callers are told.
        q.control(Control::Disconnect(Disconnect::SHUTDOWN));
        assert_eq!(q.try_control(Control::Commands(Bytes::from_static(b"1"))), Err(Disconnect::SHUTDOWN));
    }

    #[test]
    fn one_big_message_passes_when_queue_is_empty() {
        let q = Outbox::new(4);
        assert!(q.push(Bytes::from_static(b"123456")));
    }
}
