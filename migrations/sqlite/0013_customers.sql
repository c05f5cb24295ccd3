-- Customers of the partners (issue 16, SPEC §6; twin file in the other backend's folder):
-- what Partner Center lists for each partner, where the CPV app was consented through
-- applicationconsents, and the budget of Partner Center calls replicas share.
CREATE TABLE customers (
    partner_tenant_id  TEXT NOT NULL REFERENCES partners (tenant_id) ON DELETE CASCADE,
    customer_tenant_id TEXT NOT NULL,
    pc_customer_id     TEXT NOT NULL,      -- Partner Center's customer id (items[].id)
    name               TEXT NOT NULL,
    domain             TEXT,
    status             TEXT NOT NULL,      -- unconsented | consented | consent_failed | access_denied | removed | gone
    reason             TEXT,               -- the answer behind the status: what it means, what to do
    grants_applied     TEXT,               -- the grants of the last consent pushed (canonical form)
    first_seen_at      BIGINT NOT NULL,
    last_seen_at       BIGINT NOT NULL,    -- last sync that listed it
    status_changed_at  BIGINT NOT NULL,
    last_token_at      BIGINT,             -- last access token issued for this customer
    consent_failures   BIGINT NOT NULL DEFAULT 0,
    next_consent_at    BIGINT,             -- when consent is (re)tried; NULL: nothing to do
    PRIMARY KEY (partner_tenant_id, customer_tenant_id)
);
CREATE INDEX customers_due ON customers (next_consent_at);
CREATE INDEX customers_by_status ON customers (status);

-- One row per partner: when its customers were last listed and when next.
CREATE TABLE customer_syncs (
    partner_tenant_id TEXT PRIMARY KEY REFERENCES partners (tenant_id) ON DELETE CASCADE,
    last_sync_at      BIGINT,
    next_sync_at      BIGINT NOT NULL,
    last_error        TEXT
);

-- Partner Center allows 50 requests a second per application id; every process takes its
-- calls from the row of the current window, so replicas share the limit.
CREATE TABLE partner_center_budget (
    app_id       TEXT NOT NULL,
    window_start BIGINT NOT NULL,          -- the window's number: Unix time over the window's length
    used         BIGINT NOT NULL,
    PRIMARY KEY (app_id, window_start)
);
