-- The PostgreSQL schema of the chat store: the same entities as the SQLite one (see
-- src/sqlite.rs), with the unread counters and the per-message event index of SQLite's
-- later migrations folded in. NEVER edit this file once released (sqlx records its checksum):
-- add a new numbered one instead.

-- Search folds case and diacritics ("cafe" finds "Café"), like SQLite's `unicode61
-- remove_diacritics 2`: `simple` (no stemming, no stop words) behind `unaccent`.
CREATE EXTENSION IF NOT EXISTS unaccent;
CREATE TEXT SEARCH CONFIGURATION hubbub_search (COPY = simple);
ALTER TEXT SEARCH CONFIGURATION hubbub_search
    ALTER MAPPING FOR asciiword, asciihword, hword_asciipart, word, hword, hword_part
    WITH unaccent, simple;

CREATE TABLE users (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen BIGINT
);
-- Usernames are unique case-insensitively.
CREATE UNIQUE INDEX users_username ON users (lower(username));

CREATE TABLE refresh_tokens (
    -- Insertion order (SQLite's rowid): ties of `created_at` and `used_at` are broken by it.
    id BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    family TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    used_at BIGINT,
    revoked BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

CREATE TABLE rooms (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('group', 'dm')),
    name TEXT NOT NULL,
    -- "{min user id}:{max user id}" for a DM, NULL for a group.
    dm_key TEXT UNIQUE,
    epoch TEXT NOT NULL,
    -- The room's latest seq: every change takes `last_seq + 1` with an UPDATE of this row,
    -- whose row lock orders the writers of a room across nodes.
    last_seq BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    CHECK ((kind = 'dm') = (dm_key IS NOT NULL))
);

CREATE TABLE members (
    room_id BIGINT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('member', 'admin', 'owner')),
    delivered_seq BIGINT NOT NULL DEFAULT 0,
    read_seq BIGINT NOT NULL DEFAULT 0,
    joined_at BIGINT NOT NULL,
    unread BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX members_user ON members (user_id);

CREATE TABLE messages (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id BIGINT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    sender_id BIGINT NOT NULL REFERENCES users(id),
    text TEXT NOT NULL,
    -- NULL when the client gave none (no deduplication).
    client_msg_id TEXT,
    reply_to BIGINT,
    created_at BIGINT NOT NULL,
    edited_at BIGINT,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    -- The full-text index's document, always in step with the text (a tombstone's is empty).
    search TSVECTOR GENERATED ALWAYS AS (to_tsvector('hubbub_search'::regconfig, text)) STORED,
    UNIQUE (room_id, seq),
    UNIQUE (sender_id, client_msg_id)
);
CREATE INDEX messages_search ON messages USING GIN (search);

CREATE TABLE reactions (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    emoji TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (room_id, seq, emoji, user_id),
    FOREIGN KEY (room_id, seq) REFERENCES messages(room_id, seq) ON DELETE CASCADE
);

CREATE TABLE events (
    room_id BIGINT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    -- Exactly what goes on the wire (serde's encoding, rewritten by redaction in Rust).
    json TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- The message the event is about (message, edit, delete, reaction), for redaction.
    message_seq BIGINT,
    PRIMARY KEY (room_id, seq)
);
CREATE INDEX events_message ON events (room_id, message_seq) WHERE message_seq IS NOT NULL;

CREATE TABLE notifications (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    room_id BIGINT REFERENCES rooms(id) ON DELETE SET NULL,
    seq BIGINT,
    payload JSONB NOT NULL,
    read BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL
);
CREATE INDEX notifications_user ON notifications (user_id, id);
CREATE INDEX notifications_message ON notifications (room_id, seq) WHERE room_id IS NOT NULL;
