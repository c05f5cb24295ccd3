-- The token request log becomes bounded (twin file in the other backend's folder):
-- `token_requests` keeps only the latest 10,000 requests (what the security report's CSV
-- offers, as Partner Center's report does), and `token_request_hours` keeps per-hour,
-- per-client, per-resource counts for the 7-day MFA share at any request rate. Writing one
-- indexed row per request forever cost the token path a third of its throughput.
CREATE TABLE token_request_hours (
    hour       BIGINT NOT NULL,   -- unix seconds, a multiple of 3600
    client_id  TEXT NOT NULL,
    resource   TEXT NOT NULL,
    requests   BIGINT NOT NULL,
    issued     BIGINT NOT NULL,   -- requests answered with a token
    issued_mfa BIGINT NOT NULL,   -- ... whose token's amr carried mfa
    cached     BIGINT NOT NULL,   -- ... served from the cache
    PRIMARY KEY (hour, client_id, resource)
);
INSERT INTO token_request_hours (hour, client_id, resource, requests, issued, issued_mfa, cached)
SELECT (at / 3600) * 3600, client_id, resource, COUNT(*),
       SUM(CASE WHEN outcome = 'issued' THEN 1 ELSE 0 END),
       SUM(CASE WHEN outcome = 'issued' AND mfa = 1 THEN 1 ELSE 0 END),
       SUM(CASE WHEN outcome = 'issued' AND cached = 1 THEN 1 ELSE 0 END)
FROM token_requests GROUP BY (at / 3600) * 3600, client_id, resource;
DROP INDEX token_requests_by_time;
DROP INDEX token_requests_by_client;
DROP INDEX token_requests_by_tenant;
DELETE FROM token_requests
WHERE id < (SELECT id FROM token_requests ORDER BY id DESC LIMIT 1 OFFSET 9999);
