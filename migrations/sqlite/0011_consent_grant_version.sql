-- Which grant version each consent created (twin file in the other backend's folder). A
-- redemption's version descends from the one before it and only a consent starts a new
-- lineage, so the consent behind a partner's current grant is the newest one whose version is
-- at most the current version: the user who may renew or revoke that grant, judged exactly
-- rather than from the newest consent row.
ALTER TABLE consents ADD COLUMN grant_version BIGINT;

-- Consents recorded before: the consent-sourced grant written in the same transaction (same
-- tenant, same second). One that matches none stays NULL and gives its user no rights (only
-- the tenant's admins then may replace or revoke that grant).
UPDATE consents SET grant_version = (
    SELECT MAX(g.version) FROM grants g
    WHERE g.tenant_id = consents.tenant_id
      AND g.source = 'consent'
      AND g.created_at = consents.consented_at
);

CREATE INDEX consents_by_grant ON consents (tenant_id, grant_version);
