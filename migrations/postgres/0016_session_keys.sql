-- Sessions sealed under a session key instead of a data key each (twin file in the other
-- backend's folder). The key is wrapped once by the key-encryption key and kept here, and a
-- process unwraps it once, so sealing a session (every cookie-less page makes one) costs no
-- key-provider call. Rows sealed the old way are dropped: everyone signs in again after the
-- upgrade, and a consent in progress starts again.
CREATE TABLE session_keys (
    id          TEXT PRIMARY KEY,
    kek_id      TEXT NOT NULL,
    wrapped_key BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX session_keys_by_age ON session_keys (created_at);

DROP TABLE sessions;
CREATE TABLE sessions (
    id         TEXT PRIMARY KEY,           -- SHA-256 (hex) of the session id, never the id
    key_id     TEXT NOT NULL,              -- the session key that sealed it (session_keys.id)
    sealed     BYTEA NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
CREATE INDEX sessions_by_key ON sessions (key_id);
