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
//! ([`unique_prefix`]) and, for PostgreSQL, its own database ([`postgres_database`]: created
//! for the test, dropped when it ends, also when it panics).

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

/// A database of its own for one test, on the PostgreSQL server of [`postgres`]: created by
/// [`postgres_database`], dropped (with whatever still connects to it) when this is dropped,
/// also when the test panics.
#[derive(Debug)]
pub struct TempDatabase {
    name: String,
    url: String,
    admin_url: String,
}

impl TempDatabase {
    /// The URL of the database, for the code under test.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TempDatabase {
    /// Drops the database from a thread of its own with its own runtime: `Drop` may run inside
    /// the test's runtime (which cannot block on a future) or while it unwinds.
    fn drop(&mut self) {
        let (name, admin_url) = (self.name.clone(), self.admin_url.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut conn = connect_admin(&admin_url).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .map_err(std::io::Error::other)?;
                Ok::<_, std::io::Error>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop the test database {}: {e}", self.name),
            Err(_) => {
                eprintln!("could not drop the test database {}: the dropping thread panicked", self.name)
            }
        }
    }
}

async fn connect_admin(url: &str) -> std::io::Result<sqlx::PgConnection> {
    use sqlx::Connection;
    tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(url))
        .await
        .map_err(|_| std::io::Error::other(format!("connecting to {url} timed out")))?
        .map_err(std::io::Error::other)
}

/// `url` (of any database on a server) with its database replaced by `database`, keeping the
/// user, host, port and parameters.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    let mut out = format!("{scheme}://{authority}/{database}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A new, empty database of its own for the calling test (see [`TempDatabase`]); skips loudly
/// like [`postgres`] without a server. Panics when the server answers but refuses to create
/// it: that is a broken test setup, not a missing service.
pub async fn postgres_database() -> Option<TempDatabase> {
    let admin_url = postgres()?;
    let name = format!("hubbub_{}", unique_prefix());
    let mut conn =
        connect_admin(&admin_url).await.unwrap_or_else(|e| panic!("PostgreSQL at {admin_url}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("creating the test database {name} at {admin_url}: {e}"));
    let url = with_database(&admin_url, &name);
    Some(TempDatabase { name, url, admin_url })
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
    fn urls_with_another_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/db?sslmode=disable", "x"),
            "postgres://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(with_database("postgresql://h", "x"), "postgresql://h/x");
    }

    #[tokio::test]
    async fn a_temporary_database_is_created_and_dropped() {
        use sqlx::Connection;
        let Some(db) = postgres_database().await else { return };
        let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
        let name: String =
            sqlx::query_scalar("SELECT current_database()").fetch_one(&mut conn).await.unwrap();
        assert_eq!(name, db.name());
        let admin = postgres().unwrap();
        let name = db.name().to_owned();
        // Dropped even while a connection is still open.
        drop(db);
        let mut admin = sqlx::PgConnection::connect(&admin).await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn a_closed_port_is_not_reachable() {
        let port = free_port();
        assert!(!reachable(&format!("redis://127.0.0.1:{port}")));
    }
}
