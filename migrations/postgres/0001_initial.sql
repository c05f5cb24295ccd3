-- samvault schema, PostgreSQL flavour (SQLite twin: migrations/sqlite/0001_initial.sql).
-- Times are Unix seconds (UTC); flags are 0/1 integers so one set of queries serves both
-- backends through sqlx's Any driver. No secret is ever stored in clear: refresh tokens are
-- sealed (ciphertext + wrapped data key), client secrets are SHA-256 digests, invitation
-- tokens are digests, session rows are sealed.

CREATE TABLE partners (
    tenant_id         TEXT PRIMARY KEY,
    display_name      TEXT NOT NULL,
    domain            TEXT,
    status            TEXT NOT NULL,
    status_code       TEXT,              -- the AADSTS code behind the status, if any
    status_reason     TEXT,              -- what it means and what to do
    status_changed_at BIGINT NOT NULL,
    mfa               BIGINT NOT NULL,   -- 1 when the consent's token carried amr=mfa
    consented_by      TEXT NOT NULL,
    consented_at      BIGINT NOT NULL,
    last_refresh_at   BIGINT NOT NULL,   -- last successful redemption: horizon = this + 90 days
    grant_version     BIGINT NOT NULL,   -- current version in `grants`
    created_at        BIGINT NOT NULL
);
CREATE INDEX partners_by_status ON partners (status);
CREATE INDEX partners_by_last_refresh ON partners (last_refresh_at);

-- Every refresh token samvault ever held, one row per version. Only the newest versions keep
-- their sealed payload; older ones are crypto-shredded (payload and wrapped key set to NULL).
CREATE TABLE grants (
    tenant_id   TEXT NOT NULL REFERENCES partners (tenant_id) ON DELETE CASCADE,
    version     BIGINT NOT NULL,
    source      TEXT NOT NULL,           -- consent | refresh | rotation
    kek_id      TEXT,
    wrapped_key BYTEA,
    sealed      BYTEA,
    created_at  BIGINT NOT NULL,
    shredded_at BIGINT,
    PRIMARY KEY (tenant_id, version)
);

CREATE TABLE consents (
    id            BIGSERIAL PRIMARY KEY,
    tenant_id     TEXT NOT NULL,
    upn           TEXT NOT NULL,
    oid           TEXT,
    display_name  TEXT,
    mfa           BIGINT NOT NULL,
    amr           TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    invitation_id TEXT,
    consented_at  BIGINT NOT NULL
);
CREATE INDEX consents_by_tenant ON consents (tenant_id, consented_at);

CREATE TABLE status_changes (
    id          BIGSERIAL PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    at          BIGINT NOT NULL,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    code        TEXT,
    reason      TEXT NOT NULL
);
CREATE INDEX status_changes_by_tenant ON status_changes (tenant_id, at);

CREATE TABLE clients (
    client_id             TEXT PRIMARY KEY,
    name                  TEXT NOT NULL,
    permissions           TEXT NOT NULL,   -- space-separated: tokens:issue partners:read
    resources             TEXT NOT NULL,   -- space-separated resource origins
    partners              TEXT,            -- space-separated tenant ids; NULL = every partner
    rate_limit_per_minute BIGINT NOT NULL,
    created_at            BIGINT NOT NULL,
    last_used_at          BIGINT,
    revoked_at            BIGINT
);

CREATE TABLE client_secrets (
    id         TEXT PRIMARY KEY,
    client_id  TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    digest     BYTEA NOT NULL,              -- SHA-256 of the secret; the secret is shown once
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX client_secrets_by_client ON client_secrets (client_id);

CREATE TABLE invitations (
    id         TEXT PRIMARY KEY,           -- SHA-256 (hex) of the token in the onboarding URL
    tenant_id  TEXT,                       -- NULL: any tenant may use it
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    used_by    TEXT
);

CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    kek_id      TEXT NOT NULL,
    wrapped_key BYTEA NOT NULL,
    sealed      BYTEA NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);

-- Append-only, hash-chained: hash = SHA-256(prev_hash || canonical row).
CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    tenant_id TEXT,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
