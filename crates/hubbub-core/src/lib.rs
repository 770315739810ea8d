//! The real-time engine of Hubbub: sessions, the hub, channel namespaces, JWT auth, the
//! engine traits and the in-memory engine. Transports (in `hubbub-server`) only move bytes
//! between sockets and a [`session::Session`].

pub mod api;
pub mod auth;
pub mod channel;
pub mod cluster;
pub mod duration;
pub mod engine;
pub mod grant;
pub mod hooks;
pub mod hub;
pub mod node;
pub mod outbox;
pub mod proxy;
pub mod rpc;
pub mod session;
mod sharded;
pub mod tags_filter;

pub use node::{ClientConfig, Node, NodeOptions};
pub use session::Session;
