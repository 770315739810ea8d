//! Where the tests find the real services they need: Redis, NATS (with JetStream) and
//! PostgreSQL, at their standard loopback ports unless the environment says otherwise
//! (`HUBBUB_TEST_REDIS_URL`, `HUBBUB_TEST_NATS_URL`, `HUBBUB_TEST_POSTGRES_URL`).
//!
//! A test asks for a service with [`redis`], [`nats`] or [`postgres`]. When the service does
//! not answer, the test is skipped *loudly* (a line on stderr naming the service and the
//! test) and the function returns `None`, unless `HUBBUB_REQUIRE_SERVICES=1` (set by
//! `.ci/run`): then it panics, so CI can never skip a test silently.
//!
//! Tests share the machine's servers and run in parallel: each uses its own key prefix
//! ([`unique_prefix`]) and, for PostgreSQL, its own database (created and dropped by the
//! store's test support).

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Which service, its environment variable and its default address.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    Redis,
    Nats,
    Postgres,
}

impl Service {
    pub fn env_var(self) -> &'static str {
        match self {
            Service::Redis => "HUBBUB_TEST_REDIS_URL",
            Service::Nats => "HUBBUB_TEST_NATS_URL",
            Service::Postgres => "HUBBUB_TEST_POSTGRES_URL",
        }
    }

    pub fn default_url(self) -> &'static str {
        match self {
            Service::Redis => "redis://127.0.0.1:6379",
            Service::Nats => "nats://127.0.0.1:4222",
            Service::Postgres => "postgres://postgres@127.0.0.1:5432/postgres",
        }
    }

    /// The service's URL: the environment's, or the default.
    pub fn url(self) -> String {
        std::env::var(self.env_var())
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| self.default_url().into())
    }
}

/// Whether `HUBBUB_REQUIRE_SERVICES=1`: a missing service fails the test instead of skipping it.
pub fn required() -> bool {
    std::env::var("HUBBUB_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// `host:port` of a URL like `scheme://user@host:port/path`.
fn host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    Some(host_port.to_owned())
}

/// Whether something accepts TCP connections at the URL's host and port (within 2 s).
pub fn reachable(url: &str) -> bool {
    let Some(addr) = host_port(url) else { return false };
    let Ok(mut addrs) = addr.to_socket_addrs() else { return false };
    addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// The service's URL when it answers; otherwise skips loudly (`None`) or, under
/// `HUBBUB_REQUIRE_SERVICES=1`, panics.
pub fn service(which: Service) -> Option<String> {
    let url = which.url();
    if reachable(&url) {
        return Some(url);
    }
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    let message = format!("{which:?} is not reachable at {url} (set {} to its URL)", which.env_var());
    if required() {
        panic!("{message}; HUBBUB_REQUIRE_SERVICES=1, so test {test} may not skip");
    }
    eprintln!("\n!!!!! SKIPPED {test}: {message} !!!!!\n");
    None
}

pub fn redis() -> Option<String> {
    service(Service::Redis)
}

pub fn nats() -> Option<String> {
    service(Service::Nats)
}

/// The URL of the PostgreSQL server's maintenance database (`postgres`), from which a test
/// creates its own database.
pub fn postgres() -> Option<String> {
    service(Service::Postgres)
}

/// A key prefix (or database name part) no other test run uses: `t` and 12 hex digits.
pub fn unique_prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A free TCP port on 127.0.0.1 (for a test's own `redis-server` or `nats-server`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_urls() {
        assert_eq!(host_port("redis://127.0.0.1:6379").as_deref(), Some("127.0.0.1:6379"));
        assert_eq!(host_port("postgres://postgres@127.0.0.1:5432/db").as_deref(), Some("127.0.0.1:5432"));
        assert_eq!(host_port("nats://u:p@localhost:4222?x=1").as_deref(), Some("localhost:4222"));
        assert_eq!(host_port("nonsense"), None);
    }

    #[test]
    fn a_closed_port_is_not_reachable() {
        let port = free_port();
        assert!(!reachable(&format!("redis://127.0.0.1:{port}")));
    }
}
