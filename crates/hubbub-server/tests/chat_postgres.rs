//! The chat's integration tests (tests/chat_api.rs, the same file) with the chat's store on
//! PostgreSQL: real `hubbub` processes, each with a database of its own (the harness does it
//! for this test binary: `chat_on_postgres` in tests/common/mod.rs).

#[path = "chat_api.rs"]
mod chat_api;
