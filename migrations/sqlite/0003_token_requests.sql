-- The token request log (SQLite twin: migrations/postgres/0003_token_requests.sql): every
-- call to the token endpoint, written in batches off the request path. It feeds the security
-- report (7-day MFA share per client, the latest 10,000 requests).
CREATE TABLE token_requests (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        BIGINT NOT NULL,
    client_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    resource  TEXT NOT NULL,
    purpose   TEXT NOT NULL,
    outcome   TEXT NOT NULL,     -- issued, or the problem code
    cached    BIGINT NOT NULL,
    mfa       BIGINT              -- 1/0 from the token's amr; NULL when no token was issued
);
CREATE INDEX token_requests_by_time ON token_requests (at);
CREATE INDEX token_requests_by_client ON token_requests (client_id, at);
CREATE INDEX token_requests_by_tenant ON token_requests (tenant_id, at);
