//! One test suite, two backends: [`suite`] holds the tests of the [`ChatStore`] contract as
//! functions over any store implementing [`TestStore`]; each backend's test module invokes
//! [`backend_suite!`](crate::backend_suite) with its store type, which makes every one of them
//! a `#[tokio::test]` of that backend (`sqlite::tests::users`, `postgres::tests::users`, ...).
//! What only one backend has (SQLite's file and migrations, PostgreSQL's several nodes) is
//! tested next to that backend.

pub(crate) mod suite;

use std::collections::BTreeMap;

use crate::{ChatStore, RoomId, StoreLimits, UserId};

/// What the suite needs of a backend beyond [`ChatStore`].
pub(crate) trait TestStore: ChatStore + Clone + Sized {
    /// The backend's bound on one group commit.
    const MAX_BATCH: usize;

    /// A fresh, empty store, with what keeps its database alive for the test (dropped after
    /// the store); `None` when the backend's server is missing and the test skips (loudly).
    async fn fresh() -> Option<(Box<dyn std::any::Any + Send>, Self)>;

    fn with_limits(self, limits: StoreLimits) -> Self;

    /// Transactions the group-commit writer committed.
    fn append_commits(&self) -> u64;

    /// Rows of a table.
    async fn count_rows(&self, table: &str) -> i64;

    /// Every member's unread count, counted from the messages themselves (the query the
    /// stored counter replaced).
    async fn recount_unread(&self) -> BTreeMap<(RoomId, UserId), u64>;

    /// Makes every append whose text starts with "boom" fail half-way, after its seq was
    /// taken and its row written.
    async fn fail_appends_of_boom(&self);

    /// Checks the full-text index against the messages, where the backend can.
    async fn check_search_index(&self);

    /// Closes the store and checks that none of `texts` is left in the database's files,
    /// where the backend can read them.
    async fn assert_text_gone_from_files(self, texts: &[&str]);
}

/// Makes every test of [`suite`] a `#[tokio::test]` over the store type `$store`.
#[macro_export]
#[doc(hidden)]
macro_rules! backend_suite {
    ($store:ty) => {
        $crate::backend_suite!(@tests $store;
            users,
            refresh_tokens_are_bounded_per_user_and_session,
            refresh_tokens,
            groups_and_members,
            dm_is_one_room_per_pair,
            concurrent_dm_creates_one_room,
            append_and_duplicates,
            concurrent_appends_with_duplicates,
            group_commit_batches_and_isolates_failures,
            group_commit_respects_its_bound,
            concurrent_changes_of_every_kind_keep_the_stream_contiguous,
            edit_delete_and_react,
            message_pages,
            events_after,
            markers_are_monotonic_and_unread,
            rooms_of_summaries,
            notifications_are_bounded_per_user,
            notifications,
            search_is_scoped_and_safe,
            unread_counters_match_a_recount,
            a_new_message_reports_the_other_members_unread_counts,
            refused_appends_take_no_seq,
            reactions_are_bounded_per_user_and_per_message,
            edited_and_deleted_text_is_redacted_everywhere,
            memberships_are_bounded_per_user_and_per_room,
        );
    };
    (@tests $store:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((_database, store)) = <$store as $crate::tests::TestStore>::fresh().await else {
                    return;
                };
                $crate::tests::suite::$name(store).await;
            }
        )*
    };
}
