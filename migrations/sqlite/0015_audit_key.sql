-- The audit chain's HMAC key (issue 17): 256 random bits sealed by the vault like every
-- secret (data key wrapped by the KEK), one row. Entries from first_seq on are MACed with it;
-- earlier ones keep their plain SHA-256 hashes. first_seq is also bound into the sealed
-- record's associated data, so changing it here makes the key unopenable.
CREATE TABLE audit_key (
    name TEXT PRIMARY KEY,
    first_seq BIGINT NOT NULL,
    kek_id TEXT NOT NULL,
    wrapped_key BLOB NOT NULL,
    sealed BLOB NOT NULL,
    created_at BIGINT NOT NULL
);
