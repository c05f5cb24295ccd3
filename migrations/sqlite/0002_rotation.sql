-- Rotation engine (SQLite twin: migrations/postgres/0002_rotation.sql).

-- When the scheduler should redeem this grant next: last refresh + SAMVAULT_ROTATE_AFTER minus
-- a random spread, or, after a failure, the backoff / Retry-After deadline.
ALTER TABLE partners ADD COLUMN rotate_at BIGINT NOT NULL DEFAULT 0;
-- Consecutive failed attempts (reset by a success); drives the exponential backoff.
ALTER TABLE partners ADD COLUMN failures BIGINT NOT NULL DEFAULT 0;
-- The replica (or process) redeeming this partner's refresh token right now, and until when.
-- A crashed holder's lease simply runs out.
ALTER TABLE partners ADD COLUMN lease_owner TEXT;
ALTER TABLE partners ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;
CREATE INDEX partners_by_rotate_at ON partners (rotate_at);

UPDATE partners SET rotate_at = last_refresh_at;

-- Every redemption attempt: scheduled, manual or on demand from the token API.
CREATE TABLE rotation_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   TEXT NOT NULL,
    at          BIGINT NOT NULL,
    source      TEXT NOT NULL,     -- schedule | manual | token
    outcome     TEXT NOT NULL,     -- success | reconsent_required | resource_not_consented | app_credentials_invalid | transient | unexpected | key_unavailable
    code        TEXT,              -- AADSTS code, if Entra gave one
    duration_ms BIGINT NOT NULL
);
CREATE INDEX rotation_attempts_by_tenant ON rotation_attempts (tenant_id, at);
CREATE INDEX rotation_attempts_by_time ON rotation_attempts (at);

-- Global alarms shared by every replica (today: the CPV app's own credentials).
CREATE TABLE alarms (
    name   TEXT PRIMARY KEY,
    code   TEXT,
    detail TEXT NOT NULL,
    since  BIGINT NOT NULL
);

-- Webhook events waiting for delivery (an outbox: written in the same breath as the change,
-- delivered by a background worker with retries, never blocking rotation).
CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at      BIGINT NOT NULL,
    body            TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    delivered_at    BIGINT,
    last_error      TEXT
);
CREATE INDEX webhook_outbox_pending ON webhook_outbox (delivered_at, next_attempt_at);
