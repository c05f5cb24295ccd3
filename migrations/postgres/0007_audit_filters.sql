-- Indexes for the ops audit log viewer's filters (twin file in migrations/sqlite/).
-- The viewer lists newest first and pages by seq, so each index ends with seq: a filtered
-- page is one index range scan instead of a walk through every token.exchange row.
-- Appends (one per IdP exchange, consent or ops action) pay three small index updates.
CREATE INDEX audit_log_by_action ON audit_log (action, seq);
CREATE INDEX audit_log_by_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, seq);
