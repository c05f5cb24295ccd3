-- Customer-tenant token requests in the request log (SQLite twin:
-- migrations/sqlite/0014_customer_requests.sql). `tenant_id` stays the partner whose grant
-- was redeemed; `customer_tenant_id` names the customer tenant the token was for, NULL for a
-- partner's own token. The hourly counts need no change: the 7-day MFA share counts every
-- token issued, partner or customer.
ALTER TABLE token_requests ADD COLUMN customer_tenant_id TEXT;
