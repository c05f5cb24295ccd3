-- Ops dashboard users (twin file in the other backend's folder). Passwords are argon2id PHC
-- strings; the TOTP secret is sealed by the vault like a refresh token (AAD: ops-user:NAME).
CREATE TABLE ops_users (
    username             TEXT PRIMARY KEY,
    role                 TEXT NOT NULL,      -- viewer, operator, admin
    password_hash        TEXT NOT NULL,
    must_change_password BIGINT NOT NULL,    -- 1 until the user chose their own password
    totp_kek_id          TEXT NOT NULL,
    totp_wrapped_key     BYTEA NOT NULL,
    totp_sealed          BYTEA NOT NULL,
    totp_last_step       BIGINT,             -- a code is accepted once: only later steps pass
    failed_attempts      BIGINT NOT NULL,    -- consecutive failed sign-ins
    locked_until         BIGINT,
    created_at           BIGINT NOT NULL,
    last_sign_in_at      BIGINT,
    disabled_at          BIGINT
);
