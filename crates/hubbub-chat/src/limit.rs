//! The one rate limiter of the chat: log-in guesses per account and per address, message
//! writes per user, typing events per user and room.
//!
//! Each key has `limit` slots; using one takes a slot that comes back `window` after it was
//! taken (a sliding log). So at most `limit` uses happen in any `window`, and because a slot
//! is taken *before* the work it guards (a password check, a store write), concurrent
//! callers cannot overshoot it. A slot can be given back ([`RateLimiter::release`]) when the
//! use turns out not to count (a successful log-in).
//!
//! What clients can make this keep is bounded: a key is forgotten once all its slots came
//! back (a sweep at most once a second), and at most `max_keys` keys are kept. When the map
//! is full, a use that needs a new key is refused ([`Refused::Full`]): the limiter never
//! forgets a key early, which would let an attacker reset an account's count by flooding.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why [`RateLimiter::acquire`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The key used all its slots in the window.
    #[error("rate limit reached")]
    Limited,
    /// The key is new and the limiter already tracks `max_keys` keys.
    #[error("rate limiter full")]
    Full,
}

/// A slot taken by [`RateLimiter::acquire`], to give back with [`RateLimiter::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a slot is kept unless released"]
pub struct Slot(Instant);

struct State<K> {
    /// When each slot of a key was taken, oldest first; never longer than `limit`.
    used: HashMap<K, VecDeque<Instant>>,
    swept: Instant,
}

/// At most `limit` uses per key in any `window`, for at most `max_keys` keys.
pub struct RateLimiter<K> {
    limit: usize,
    window: Duration,
    max_keys: usize,
    state: Mutex<State<K>>,
}

/// How often the whole map is swept of keys whose slots all came back.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(limit: usize, window: Duration, max_keys: usize) -> Self {
        RateLimiter {
            limit: limit.max(1),
            window,
            max_keys: max_keys.max(1),
            state: Mutex::new(State { used: HashMap::new(), swept: Instant::now() }),
        }
    }

    /// `per_second` uses per second on average, `burst` at once: `burst` slots that come
    /// back `burst / per_second` seconds after use.
    pub fn per_second(per_second: f64, burst: usize, max_keys: usize) -> Self {
        let burst = burst.max(1);
        Self::new(burst, Duration::from_secs_f64(burst as f64 / per_second.max(f64::MIN_POSITIVE)), max_keys)
    }

    /// Takes one of `key`'s slots, or says why not.
    pub fn acquire(&self, key: &K) -> Result<Slot, Refused> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.sweep(&mut state, now);
        let window = self.window;
        let fresh = |t: &Instant| now.duration_since(*t) < window;
        if let Some(used) = state.used.get_mut(key) {
            while used.front().is_some_and(|t| !fresh(t)) {
                used.pop_front();
            }
            if used.len() >= self.limit {
                return Err(Refused::Limited);
            }
            used.push_back(now);
            return Ok(Slot(now));
        }
        if state.used.len() >= self.max_keys {
            return Err(Refused::Full);
        }
        state.used.insert(key.clone(), VecDeque::from([now]));
        Ok(Slot(now))
    }

    /// Gives a slot back: the use it guarded does not count.
    pub fn release(&self, key: &K, slot: Slot) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(used) = state.used.get_mut(key) else { return };
        if let Some(i) = used.iter().rposition(|t| *t == slot.0) {
            used.remove(i);
        }
        if used.is_empty() {
            state.used.remove(key);
        }
    }

    /// Keys tracked now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the keys whose slots all came back, at most once per [`SWEEP_EVERY`], and
    /// hands memory back once the map has shrunk well below its peak.
    fn sweep(&self, state: &mut State<K>, now: Instant) {
        if now.duration_since(state.swept) < SWEEP_EVERY.min(self.window) {
            return;
        }
        state.swept = now;
        let window = self.window;
        state.used.retain(|_, used| used.back().is_some_and(|t| now.duration_since(*t) < window));
        if state.used.capacity() > 64 && state.used.len() < state.used.capacity() / 4 {
            state.used.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_per_key_in_the_window() {
        let l = RateLimiter::new(2, Duration::from_secs(60), 100);
        assert!(l.acquire(&"a").is_ok());
        assert!(l.acquire(&"a").is_ok());
        assert_eq!(l.acquire(&"a"), Err(Refused::Limited));
        assert!(l.acquire(&"b").is_ok());
    }

    #[test]
    fn released_slots_do_not_count() {
        let l = RateLimiter::new(1, Duration::from_secs(60), 100);
        let slot = l.acquire(&"a").unwrap();
        assert_eq!(l.acquire(&"a"), Err(Refused::Limited));
        l.release(&"a", slot);
        assert!(l.is_empty());
        assert!(l.acquire(&"a").is_ok());
    }

    #[test]
    fn slots_come_back_after_the_window() {
        let l = RateLimiter::new(1, Duration::from_millis(30), 100);
        assert!(l.acquire(&1).is_ok());
        assert_eq!(l.acquire(&1), Err(Refused::Limited));
        std::thread::sleep(Duration::from_millis(40));
        assert!(l.acquire(&1).is_ok());
    }

    #[test]
    fn the_map_is_bounded_and_swept() {
        let l = RateLimiter::new(1, Duration::from_millis(30), 3);
        for k in 0..3 {
            assert!(l.acquire(&k).is_ok());
        }
        assert_eq!(l.acquire(&99), Err(Refused::Full));
        assert_eq!(l.len(), 3);
        std::thread::sleep(Duration::from_millis(40));
        assert!(l.acquire(&99).is_ok(), "expired keys are swept when needed");
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn per_second_with_burst() {
        let l = RateLimiter::per_second(100.0, 2, 10);
        assert!(l.acquire(&()).is_ok());
        assert!(l.acquire(&()).is_ok());
        assert_eq!(l.acquire(&()), Err(Refused::Limited));
        std::thread::sleep(Duration::from_millis(25));
        assert!(l.acquire(&()).is_ok());
    }
}
