-- Key rotations (`samvault keys rotate`), so a rotation interrupted by a crash is resumed onto
-- the same key-encryption key instead of minting another (twin file in the other backend's folder).
CREATE TABLE key_rotations (
    id            TEXT PRIMARY KEY,
    target_kek_id TEXT NOT NULL,
    started_at    BIGINT NOT NULL,
    finished_at   BIGINT,
    rewrapped     BIGINT NOT NULL       -- records moved onto target_kek_id so far
);
