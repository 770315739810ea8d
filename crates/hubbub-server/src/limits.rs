//! Limits on new connections, checked on every connection request (`/connection/*`) before
//! any upgrade or session exists, as Centrifugo checks its own:
//! * `client.connection_limit`: connections this node holds; over it, 503;
//! * `client.connection_rate_limit`: connection requests per second on this node; 503;
//! * `client.connection_rate_limit_per_ip`: requests per second from one address (IPv6 by
//!   its /64, what one host usually gets); 429.
//!
//! The per-user limit (`client.user_connection_limit`, 3504) is the hub's, at connect.
//! All of these are node-local: in a cluster each node counts its own.

use crate::api::ApiError;
use crate::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hubbub_core::ClientConfig;
use hubbub_protocol::codes::{ERROR_LIMIT_EXCEEDED, ERROR_TOO_MANY_REQUESTS};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub struct Limits {
    connection_limit: usize,
    node_rate: Option<Mutex<Bucket>>,
    per_ip: Option<IpRateLimiter>,
}

impl Limits {
    pub fn new(client: &ClientConfig) -> Self {
        Limits {
            connection_limit: client.connection_limit,
            node_rate: (client.connection_rate_limit > 0)
                .then(|| Mutex::new(Bucket::new(client.connection_rate_limit))),
            per_ip: (client.connection_rate_limit_per_ip > 0).then(|| {
                IpRateLimiter::new(client.connection_rate_limit_per_ip, client.connection_rate_limit_max_ips)
            }),
        }
    }
}

/// The middleware of the connection routes.
pub async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let limits = &state.limits;
    if limits.connection_limit > 0 && state.node.hub.counts().0 >= limits.connection_limit {
        tracing::warn!(
            limit = limits.connection_limit,
            "client.connection_limit reached: connection refused"
        );
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ERROR_LIMIT_EXCEEDED).into_response();
    }
    let remote = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    if let (Some(ip), Some(remote)) = (&limits.per_ip, remote) {
        if !ip.check(remote, Instant::now()) {
            tracing::info!(ip = %remote, "client.connection_rate_limit_per_ip reached: connection refused");
            return ApiError::new(StatusCode::TOO_MANY_REQUESTS, ERROR_TOO_MANY_REQUESTS).into_response();
        }
    }
    if let Some(bucket) = &limits.node_rate {
        if !bucket.lock().unwrap_or_else(|p| p.into_inner()).take(Instant::now()) {
            tracing::info!("client.connection_rate_limit reached: connection refused");
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ERROR_TOO_MANY_REQUESTS).into_response();
        }
    }
    next.run(request).await
}

/// A token bucket: `rate` at once, refilled at `rate` per second.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        Bucket { rate: rate as f64, tokens: rate as f64, at: Instant::now() }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts connection requests per address in one-second windows. Addresses are chosen by
/// whoever connects, so the map is bounded: it holds at most `max_ips` addresses and is
/// emptied when the window turns (every second), so nothing stays longer. An address that
/// finds the map full is let through untracked, so a flood from many addresses cannot lock
/// out the others (`client.connection_rate_limit` bounds the node as a whole).
pub struct IpRateLimiter {
    per_second: u32,
    max_ips: usize,
    window: Mutex<Window>,
}

struct Window {
    started: Instant,
    counts: HashMap<IpKey, u32>,
    full_logged: bool,
}

/// An IPv4 address, or the /64 prefix of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IpKey {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4.into()),
                None => IpKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

impl IpRateLimiter {
    pub fn new(per_second: u32, max_ips: usize) -> Self {
        let window = Window { started: Instant::now(), counts: HashMap::new(), full_logged: false };
        IpRateLimiter { per_second, max_ips: max_ips.max(1), window: Mutex::new(window) }
    }

    /// Whether a connection request from `ip` at `now` is within the limit.
    pub fn check(&self, ip: IpAddr, now: Instant) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_duration_since(window.started).as_secs() >= 1 {
            window.started = now;
            window.counts = HashMap::new();
            window.full_logged = false;
        }
        let key = IpKey::from(ip);
        let full = window.counts.len() >= self.max_ips;
        match window.counts.get_mut(&key) {
            Some(count) if *count >= self.per_second => false,
            Some(count) => {
                *count += 1;
                true
            }
            None if full => {
                if !window.full_logged {
                    window.full_logged = true;
                    tracing::warn!(
                        max_ips = self.max_ips,
                        "client.connection_rate_limit_max_ips addresses this second: others pass untracked"
                    );
                }
                true
            }
            None => {
                window.counts.insert(key, 1);
                true
            }
        }
    }

    /// Addresses tracked now.
    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.window.lock().unwrap_or_else(|p| p.into_inner()).counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    #[test]
    fn per_ip_limit_and_its_window() {
        let limiter = IpRateLimiter::new(3, 100);
        let start = Instant::now();
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        assert!((0..3).all(|_| limiter.check(a, start)));
        assert!(!limiter.check(a, start), "the fourth in a second is refused");
        assert!(limiter.check(b, start), "another address has its own count");
        assert!(limiter.check(a, start + Duration::from_millis(1001)), "a new second");
        // One IPv6 host's /64 is one address.
        let v6 = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
        assert!((1..=3).all(|i| limiter.check(v6(i), start)));
        assert!(!limiter.check(v6(99), start));
    }

    #[test]
    fn a_flood_of_distinct_addresses_stays_bounded() {
        let limiter = IpRateLimiter::new(1, 1000);
        let start = Instant::now();
        for i in 0..200_000u32 {
            assert!(limiter.check(IpAddr::V4(Ipv4Addr::from(i)), start + Duration::from_micros(i as u64)));
            assert!(limiter.tracked() <= 1000);
        }
        // Addresses tracked before the map filled are still limited; the window turns.
        assert!(!limiter.check(IpAddr::V4(Ipv4Addr::from(5)), start + Duration::from_millis(500)));
        assert!(limiter.check(IpAddr::V4(Ipv4Addr::from(5)), start + Duration::from_secs(2)));
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn node_bucket() {
        let mut bucket = Bucket::new(2);
        let now = Instant::now();
        assert!(bucket.take(now) && bucket.take(now));
        assert!(!bucket.take(now));
        assert!(bucket.take(now + Duration::from_millis(600)));
    }
}
