//! Storage tests: every public function of `samvault::storage`, each test run against a
//! fresh SQLite database and a fresh PostgreSQL database (see `tests/support`).
#![allow(clippy::too_many_lines)] // scenarios read top to bottom

mod support;

use samvault::domain::{PartnerStatus, Resource, TenantId};
use samvault::storage::audit::{Broken, Head};
use samvault::storage::partners::{
    self, GrantHolder, GuardedConsent, NewConsent, StoredGrant, grant_context,
};
use samvault::storage::requests::{self, RECENT, RequestBatch, RequestCounts, RequestRecord};
use samvault::storage::session_keys::ROLL_AFTER;
use samvault::storage::sessions::{self, SealedSessionStore};
use samvault::storage::{Db, StorageError, audit, clients, invitations, rotation, stats};
use samvault::vault::{SealedRecord, Vault, VaultError, WrappedKey};
use secrecy::ExposeSecret;
use sqlx::Row;
use std::sync::Arc;
use support::*;

/// A fixed clock: storage takes times as arguments, so tests do not depend on the wall clock.
const T0: i64 = 1_700_000_000;
const DAY: i64 = 86_400;

async fn seal_grant(
    vault: &Vault,
    tenant: &TenantId,
    version: i64,
    refresh_token: &str,
) -> StoredGrant {
    StoredGrant {
        version,
        sealed: vault
            .seal(refresh_token.as_bytes(), &grant_context(tenant, version))
            .await
            .expect("seal"),
    }
}

async fn open_grant(vault: &Vault, tenant: &TenantId, grant: &StoredGrant) -> String {
    let plain = vault
        .open(&grant.sealed, &grant_context(tenant, grant.version))
        .await
        .expect("the stored grant opens with its own context");
    String::from_utf8(plain.expose_secret().clone()).unwrap()
}

/// Grants are scheduled for rotation this long after a consent or refresh.
const ROTATE_AFTER: i64 = 7 * DAY;

async fn record_consent(
    db: &Db,
    consent: &NewConsent,
    grant: &StoredGrant,
    now: i64,
) -> Result<(), StorageError> {
    partners::record_consent(db, consent, grant, now, now + ROTATE_AFTER).await
}

async fn record_refresh(
    db: &Db,
    tenant: &TenantId,
    grant: &StoredGrant,
    source: &str,
    now: i64,
) -> Result<(), StorageError> {
    let attempt = partners::Attempt {
        source,
        duration_ms: 5,
        lease_owner: "test",
    };
    partners::record_refresh(db, tenant, grant, &attempt, now, now + ROTATE_AFTER).await
}

/// The partner's rotation schedule as stored: `(rotate_at, failures)`.
async fn schedule(db: &Db, tenant: &TenantId) -> (i64, i64) {
    let row = sqlx::query("SELECT rotate_at, failures FROM partners WHERE tenant_id = $1")
        .bind(tenant.as_str())
        .fetch_one(db.pool())
        .await
        .unwrap();
    (
        row.try_get("rotate_at").unwrap(),
        row.try_get("failures").unwrap(),
    )
}

fn consent_for(tenant: &TenantId, name: &str, upn: &str, mfa: bool) -> NewConsent {
    NewConsent {
        tenant_id: tenant.clone(),
        display_name: name.to_string(),
        domain: Some(format!("{}.onmicrosoft.com", name.to_lowercase())),
        upn: upn.to_string(),
        oid: Some("00000000-0000-0000-0000-00000000a11c".to_string()),
        user_name: Some("Alice Admin".to_string()),
        mfa,
        amr: if mfa {
            vec!["pwd".into(), "mfa".into()]
        } else {
            vec!["pwd".into()]
        },
        scopes: "https://api.partnercenter.microsoft.com/user_impersonation offline_access"
            .to_string(),
        invitation_id: None,
    }
}

async fn count(db: &Db, sql: &'static str, tenant: &TenantId) -> i64 {
    sqlx::query(sql)
        .bind(tenant.as_str())
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get::<i64, _>("n")
        .unwrap()
}

/// One raw `grants` row, as a database reader would see it.
struct RawGrant {
    version: i64,
    source: String,
    kek_id: Option<String>,
    wrapped_key: Option<Vec<u8>>,
    sealed: Option<Vec<u8>>,
    shredded_at: Option<i64>,
}

async fn raw_grants(db: &Db, tenant: &TenantId) -> Vec<RawGrant> {
    sqlx::query(
        "SELECT version, source, kek_id, wrapped_key, sealed, shredded_at FROM grants WHERE tenant_id = $1 ORDER BY version",
    )
    .bind(tenant.as_str())
    .fetch_all(db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| RawGrant {
        version: r.try_get("version").unwrap(),
        source: r.try_get("source").unwrap(),
        kek_id: r.try_get("kek_id").unwrap(),
        wrapped_key: r.try_get("wrapped_key").unwrap(),
        sealed: r.try_get("sealed").unwrap(),
        shredded_at: r.try_get("shredded_at").unwrap(),
    })
    .collect()
}

/// Every byte of every stored grant column, for "the plaintext is nowhere" checks.
fn grant_bytes(rows: &[RawGrant]) -> Vec<u8> {
    let mut all = Vec::new();
    for r in rows {
        all.extend_from_slice(r.source.as_bytes());
        all.extend_from_slice(r.kek_id.as_deref().unwrap_or("").as_bytes());
        all.extend_from_slice(r.wrapped_key.as_deref().unwrap_or_default());
        all.extend_from_slice(r.sealed.as_deref().unwrap_or_default());
    }
    all
}

fn assert_live(row: &RawGrant) {
    assert!(
        row.sealed.is_some()
            && row.wrapped_key.is_some()
            && row.kek_id.is_some()
            && row.shredded_at.is_none(),
        "grant v{} should still be sealed and usable",
        row.version
    );
}

fn assert_shredded(row: &RawGrant, at: i64) {
    assert!(
        row.sealed.is_none() && row.wrapped_key.is_none() && row.kek_id.is_none(),
        "grant v{} should be crypto-shredded",
        row.version
    );
    assert_eq!(
        row.shredded_at,
        Some(at),
        "grant v{} shredded_at",
        row.version
    );
}

// ---------------------------------------------------------------------------------------
// Migrations
// ---------------------------------------------------------------------------------------

async fn applied_migrations(db: &Db) -> Vec<i64> {
    sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get("version").unwrap())
        .collect()
}

both_backends!(migrations_are_idempotent, |url| async move {
    let db = open(&url).await;
    let applied = applied_migrations(&db).await;
    assert_eq!(
        applied.first(),
        Some(&1),
        "the initial migration is applied"
    );
    // Every file of the backend's folder, once, in order (numbers may have gaps: branches
    // reserve theirs).
    let folder = if url.starts_with("sqlite:") {
        "sqlite"
    } else {
        "postgres"
    };
    let mut expected: Vec<i64> = std::fs::read_dir(format!("migrations/{folder}"))
        .unwrap()
        .map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.split('_').next().unwrap().parse().unwrap()
        })
        .collect();
    expected.sort();
    assert_eq!(applied, expected, "every migration applied once, in order");

    let tenant = new_tenant();
    let v = local_vault();
    let grant = seal_grant(&v.vault, &tenant, 1, "0.A-rt-before-remigrate").await;
    record_consent(
        &db,
        &consent_for(&tenant, "Contoso", "a@contoso.com", true),
        &grant,
        T0,
    )
    .await
    .unwrap();

    // Same handle, then a brand-new connection: both must be no-ops that keep the data.
    db.migrate().await.expect("second migrate on the same pool");
    let again = open(&url).await;
    again.migrate().await.expect("third migrate on a new pool");
    assert_eq!(
        applied_migrations(&again).await,
        applied,
        "nothing re-applied"
    );
    assert_eq!(partners::list(&again).await.unwrap().len(), 1);
    let current = partners::current_grant(&again, &tenant)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        open_grant(&v.vault, &tenant, &current).await,
        "0.A-rt-before-remigrate"
    );
    again.ping().await.unwrap();
});

// ---------------------------------------------------------------------------------------
// Partners and grants
// ---------------------------------------------------------------------------------------

both_backends!(
    consent_stores_an_active_partner_and_a_sealed_grant,
    |url| async move {
        let db = open(&url).await;
        let v = local_vault();
        let tenant = new_tenant();
        const RT: &str = "0.AXoA-consent-refresh-token-plaintext-7f3c";

        assert!(partners::get(&db, &tenant).await.unwrap().is_none());
        assert!(
            partners::current_grant(&db, &tenant)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(partners::next_version(&db, &tenant).await.unwrap(), 1);

        let grant = seal_grant(&v.vault, &tenant, 1, RT).await;
        let mut consent = consent_for(&tenant, "Contoso", "admin@contoso.com", true);
        consent.invitation_id = Some("inv-1".into());
        record_consent(&db, &consent, &grant, T0).await.unwrap();

        let p = partners::get(&db, &tenant)
            .await
            .unwrap()
            .expect("partner exists");
        assert_eq!(p.tenant_id, tenant);
        assert_eq!(p.display_name, "Contoso");
        assert_eq!(p.domain.as_deref(), Some("contoso.onmicrosoft.com"));
        assert_eq!(p.status, PartnerStatus::Active);
        assert_eq!(p.status_code, None);
        assert!(p.mfa);
        assert_eq!(p.consented_by, "admin@contoso.com");
        assert_eq!(
            (p.consented_at, p.last_refresh_at, p.status_changed_at),
            (T0, T0, T0)
        );
        assert_eq!(p.grant_version, 1);
        assert_eq!(p.horizon(), T0 + 90 * DAY);
        assert_eq!(
            schedule(&db, &tenant).await,
            (T0 + ROTATE_AFTER, 0),
            "rotation scheduled"
        );

        // The stored grant opens to the refresh token, and only under its own tenant + version.
        let stored = partners::current_grant(&db, &tenant)
            .await
            .unwrap()
            .expect("current grant");
        assert_eq!(stored.version, 1);
        assert_eq!(open_grant(&v.vault, &tenant, &stored).await, RT);
        assert!(
            v.vault
                .open(&stored.sealed, &grant_context(&tenant, 2))
                .await
                .is_err()
        );
        assert!(
            v.vault
                .open(&stored.sealed, &grant_context(&new_tenant(), 1))
                .await
                .is_err()
        );

        // What a database reader sees: ciphertext and a wrapped key, never the token.
        let raw = raw_grants(&db, &tenant).await;
        assert_eq!(raw.len(), 1);
        assert_live(&raw[0]);
        assert_eq!(raw[0].source, "consent");
        assert_eq!(
            raw[0].kek_id.as_deref(),
            Some(grant.sealed.wrapped_key.kek_id.as_str())
        );
        assert_eq!(
            raw[0].sealed.as_deref(),
            Some(grant.sealed.record.as_bytes())
        );
        assert!(SealedRecord::decode(raw[0].sealed.clone().unwrap()).is_ok());
        let bytes = grant_bytes(&raw);
        assert!(
            !contains_bytes(&bytes, RT.as_bytes()),
            "refresh token in clear in grants"
        );
        assert!(
            !contains_bytes(&bytes, b"consent-refresh-token"),
            "part of the token in clear"
        );

        // History: one consent row and one status change, both for this tenant.
        assert_eq!(
            count(
                &db,
                "SELECT COUNT(*) AS n FROM consents WHERE tenant_id = $1",
                &tenant
            )
            .await,
            1
        );
        let row =
            sqlx::query("SELECT upn, mfa, amr, invitation_id FROM consents WHERE tenant_id = $1")
                .bind(tenant.as_str())
                .fetch_one(db.pool())
                .await
                .unwrap();
        assert_eq!(
            row.try_get::<String, _>("upn").unwrap(),
            "admin@contoso.com"
        );
        assert_eq!(row.try_get::<i64, _>("mfa").unwrap(), 1);
        assert_eq!(row.try_get::<String, _>("amr").unwrap(), "pwd mfa");
        assert_eq!(
            row.try_get::<Option<String>, _>("invitation_id")
                .unwrap()
                .as_deref(),
            Some("inv-1")
        );
        let change =
            sqlx::query("SELECT from_status, to_status FROM status_changes WHERE tenant_id = $1")
                .bind(tenant.as_str())
                .fetch_one(db.pool())
                .await
                .unwrap();
        assert_eq!(
            change.try_get::<Option<String>, _>("from_status").unwrap(),
            None
        );
        assert_eq!(change.try_get::<String, _>("to_status").unwrap(), "active");

        assert_eq!(partners::next_version(&db, &tenant).await.unwrap(), 2);
        // Another tenant's versions are independent.
        assert_eq!(partners::next_version(&db, &new_tenant()).await.unwrap(), 1);
    }
);

both_backends!(
    refresh_keeps_the_previous_version_and_shreds_older_ones,
    |url| async move {
        let db = open(&url).await;
        let v = local_vault();
        let tenant = new_tenant();
        let other = new_tenant();
        let tokens: Vec<String> = (1..=4)
            .map(|n| format!("0.AXoA-refresh-token-v{n}-secret"))
            .collect();

        let g1 = seal_grant(&v.vault, &tenant, 1, &tokens[0]).await;
        record_consent(
            &db,
            &consent_for(&tenant, "Fabrikam", "a@fabrikam.com", true),
            &g1,
            T0,
        )
        .await
        .unwrap();
        // A second partner whose grants must be untouched by the first one's refreshes.
        let o1 = seal_grant(&v.vault, &other, 1, "0.AXoA-other-tenant-token").await;
        record_consent(
            &db,
            &consent_for(&other, "Other", "a@other.com", true),
            &o1,
            T0,
        )
        .await
        .unwrap();

        // v2: the previous version (v1) stays as a fallback.
        let t2 = T0 + DAY;
        assert_eq!(partners::next_version(&db, &tenant).await.unwrap(), 2);
        let g2 = seal_grant(&v.vault, &tenant, 2, &tokens[1]).await;
        // Two failed attempts before this success: the success resets the backoff.
        rotation::record_failure(&db, &tenant, t2 - 60)
            .await
            .unwrap();
        rotation::record_failure(&db, &tenant, t2 - 30)
            .await
            .unwrap();
        assert_eq!(schedule(&db, &tenant).await, (t2 - 30, 2));
        record_refresh(&db, &tenant, &g2, "refresh", t2)
            .await
            .unwrap();
        let raw = raw_grants(&db, &tenant).await;
        assert_eq!(raw.len(), 2);
        assert_live(&raw[0]);
        assert_live(&raw[1]);
        assert_eq!(raw[1].source, "refresh");
        let p = partners::get(&db, &tenant).await.unwrap().unwrap();
        assert_eq!((p.grant_version, p.last_refresh_at), (2, t2));
        assert_eq!(p.horizon(), t2 + 90 * DAY);
        assert_eq!(p.consented_at, T0, "a refresh is not a consent");
        assert_eq!(schedule(&db, &tenant).await, (t2 + ROTATE_AFTER, 0));
        assert_eq!(schedule(&db, &other).await, (T0 + ROTATE_AFTER, 0));

        // v3: v1 is now older than the previous version, so it is crypto-shredded.
        let t3 = T0 + 2 * DAY;
        assert_eq!(partners::next_version(&db, &tenant).await.unwrap(), 3);
        let g3 = seal_grant(&v.vault, &tenant, 3, &tokens[2]).await;
        record_refresh(&db, &tenant, &g3, "rotation", t3)
            .await
            .unwrap();
        let raw = raw_grants(&db, &tenant).await;
        assert_eq!(
            raw.len(),
            3,
            "shredding keeps the row (history), only the key material goes"
        );
        assert_shredded(&raw[0], t3);
        assert_live(&raw[1]);
        assert_live(&raw[2]);
        assert_eq!(raw[2].source, "rotation");

        // v4: v2 goes too; v3 stays; v1 keeps its original shredded_at.
        let t4 = T0 + 3 * DAY;
        let g4 = seal_grant(&v.vault, &tenant, 4, &tokens[3]).await;
        record_refresh(&db, &tenant, &g4, "refresh", t4)
            .await
            .unwrap();
        let raw = raw_grants(&db, &tenant).await;
        assert_shredded(&raw[0], t3);
        assert_shredded(&raw[1], t4);
        assert_live(&raw[2]);
        assert_live(&raw[3]);

        let current = partners::current_grant(&db, &tenant)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(current.version, 4);
        assert_eq!(open_grant(&v.vault, &tenant, &current).await, tokens[3]);
        assert_eq!(
            partners::get(&db, &tenant)
                .await
                .unwrap()
                .unwrap()
                .last_refresh_at,
            t4
        );

        let bytes = grant_bytes(&raw);
        for token in &tokens {
            assert!(
                !contains_bytes(&bytes, token.as_bytes()),
                "{token} in clear in grants"
            );
        }

        // The other partner: still one live grant at v1 that opens.
        let other_raw = raw_grants(&db, &other).await;
        assert_eq!(other_raw.len(), 1);
        assert_live(&other_raw[0]);
        let other_grant = partners::current_grant(&db, &other).await.unwrap().unwrap();
        assert_eq!(
            open_grant(&v.vault, &other, &other_grant).await,
            "0.AXoA-other-tenant-token"
        );
        assert_eq!(
            partners::get(&db, &other)
                .await
                .unwrap()
                .unwrap()
                .last_refresh_at,
            T0
        );
    }
);

both_backends!(writes_are_all_or_nothing, |url| async move {
    let db = open(&url).await;
    let v = local_vault();
    let tenant = new_tenant();
    let g1 = seal_grant(&v.vault, &tenant, 1, "0.A-first").await;
    record_consent(
        &db,
        &consent_for(&tenant, "Contoso", "first@contoso.com", true),
        &g1,
        T0,
    )
    .await
    .unwrap();

    // A consent reusing an existing version fails on the grants key, and nothing of it stays.
    let dup = seal_grant(&v.vault, &tenant, 1, "0.A-dup").await;
    let err = record_consent(
        &db,
        &consent_for(&tenant, "Renamed", "second@contoso.com", false),
        &dup,
        T0 + 10,
    )
    .await;
    assert!(err.is_err(), "duplicate grant version must fail");
    let p = partners::get(&db, &tenant).await.unwrap().unwrap();
    assert_eq!(
        (p.display_name.as_str(), p.consented_by.as_str(), p.mfa),
        ("Contoso", "first@contoso.com", true)
    );
    assert_eq!(p.consented_at, T0);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM consents WHERE tenant_id = $1",
            &tenant
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM status_changes WHERE tenant_id = $1",
            &tenant
        )
        .await,
        1
    );

    // Same for a refresh: the partner's current version and horizon do not move.
    assert!(
        record_refresh(&db, &tenant, &dup, "refresh", T0 + 20)
            .await
            .is_err()
    );
    let p = partners::get(&db, &tenant).await.unwrap().unwrap();
    assert_eq!((p.grant_version, p.last_refresh_at), (1, T0));
    let current = partners::current_grant(&db, &tenant)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(open_grant(&v.vault, &tenant, &current).await, "0.A-first");
});

both_backends!(
    set_status_reports_the_previous_status_or_a_no_op,
    |url| async move {
        let db = open(&url).await;
        let v = local_vault();
        let tenant = new_tenant();
        let changes = "SELECT COUNT(*) AS n FROM status_changes WHERE tenant_id = $1";

        // Unknown tenant: nothing to change.
        assert_eq!(
            partners::set_status(&db, &tenant, PartnerStatus::Revoked, None, "x", T0)
                .await
                .unwrap(),
            None
        );
        assert_eq!(count(&db, changes, &tenant).await, 0);

        let g1 = seal_grant(&v.vault, &tenant, 1, "0.A-rt").await;
        record_consent(
            &db,
            &consent_for(&tenant, "Contoso", "a@contoso.com", true),
            &g1,
            T0,
        )
        .await
        .unwrap();
        assert_eq!(count(&db, changes, &tenant).await, 1);

        // Same status and code: a no-op that records nothing and keeps the old reason and time.
        assert_eq!(
            partners::set_status(
                &db,
                &tenant,
                PartnerStatus::Active,
                None,
                "still fine",
                T0 + 5
            )
            .await
            .unwrap(),
            None
        );
        let p = partners::get(&db, &tenant).await.unwrap().unwrap();
        assert_eq!((p.status_changed_at, p.status_reason), (T0, None));
        assert_eq!(count(&db, changes, &tenant).await, 1);

        // A real change returns the previous status and records code and reason.
        let t1 = T0 + DAY;
        let reason = "AADSTS700082: refresh token expired due to inactivity; ask the partner to consent again";
        assert_eq!(
            partners::set_status(
                &db,
                &tenant,
                PartnerStatus::ReconsentRequired,
                Some("700082"),
                reason,
                t1
            )
            .await
            .unwrap(),
            Some(PartnerStatus::Active)
        );
        let p = partners::get(&db, &tenant).await.unwrap().unwrap();
        assert_eq!(p.status, PartnerStatus::ReconsentRequired);
        assert_eq!(p.status_code.as_deref(), Some("700082"));
        assert_eq!(p.status_reason.as_deref(), Some(reason));
        assert_eq!(p.status_changed_at, t1);
        assert_eq!(count(&db, changes, &tenant).await, 2);

        // Repeating it is a no-op ...
        assert_eq!(
            partners::set_status(
                &db,
                &tenant,
                PartnerStatus::ReconsentRequired,
                Some("700082"),
                reason,
                t1 + 60
            )
            .await
            .unwrap(),
            None
        );
        assert_eq!(
            partners::get(&db, &tenant)
                .await
                .unwrap()
                .unwrap()
                .status_changed_at,
            t1
        );
        assert_eq!(count(&db, changes, &tenant).await, 2);

        // ... but a new code with the same status is a change worth recording.
        assert_eq!(
            partners::set_status(
                &db,
                &tenant,
                PartnerStatus::ReconsentRequired,
                Some("50173"),
                "grant revoked",
                t1 + 120
            )
            .await
            .unwrap(),
            Some(PartnerStatus::ReconsentRequired)
        );
        assert_eq!(count(&db, changes, &tenant).await, 3);
        let last = sqlx::query(
        "SELECT from_status, to_status, code, reason, at FROM status_changes WHERE tenant_id = $1 ORDER BY id DESC LIMIT 1",
    )
    .bind(tenant.as_str())
    .fetch_one(db.pool())
    .await
    .unwrap();
        assert_eq!(
            last.try_get::<Option<String>, _>("from_status")
                .unwrap()
                .as_deref(),
            Some("reconsent_required")
        );
        assert_eq!(
            last.try_get::<String, _>("to_status").unwrap(),
            "reconsent_required"
        );
        assert_eq!(
            last.try_get::<Option<String>, _>("code")
                .unwrap()
                .as_deref(),
            Some("50173")
        );
        assert_eq!(
            last.try_get::<String, _>("reason").unwrap(),
            "grant revoked"
        );
        assert_eq!(last.try_get::<i64, _>("at").unwrap(), t1 + 120);

        // Back to active with no code, then at_risk.
        assert_eq!(
            partners::set_status(
                &db,
                &tenant,
                PartnerStatus::Active,
                None,
                "recovered",
                t1 + 180
            )
            .await
            .unwrap(),
            Some(PartnerStatus::ReconsentRequired)
        );
        assert_eq!(
            partners::set_status(
                &db,
                &tenant,
                PartnerStatus::AtRisk,
                None,
                "horizon near",
                t1 + 240
            )
            .await
            .unwrap(),
            Some(PartnerStatus::Active)
        );
        let p = partners::get(&db, &tenant).await.unwrap().unwrap();
        assert_eq!((p.status, p.status_code), (PartnerStatus::AtRisk, None));
    }
);

// Issue 17: a consent that checks what it replaces, in its own transaction. The check sees
// the consent behind the usable grant; a refusal writes nothing; of two consents racing on
// one invitation exactly one claims it; a grant version written first by another consent
// is a `Concurrent` outcome, not an error; a redemption's version stands behind the consent
// its lineage started from.
both_backends!(guarded_consents_check_what_they_replace, |url| async move {
    let db = open(&url).await;
    let v = local_vault();
    let tenant = new_tenant();
    let guarded = |consent: NewConsent, grant: StoredGrant, why: Option<&'static str>| {
        let db = db.clone();
        async move {
            partners::record_consent_guarded(&db, &consent, &grant, T0, T0 + ROTATE_AFTER, |_| why)
                .await
                .unwrap()
        }
    };
    let consents = || {
        count(
            &db,
            "SELECT COUNT(*) AS n FROM consents WHERE tenant_id = $1",
            &tenant,
        )
    };
    let jane = consent_for(&tenant, "Contoso", "jane@contoso.com", true);
    let first = guarded(
        jane.clone(),
        seal_grant(&v.vault, &tenant, 1, "0.A-j").await,
        None,
    )
    .await;
    assert!(
        matches!(first, GuardedConsent::Recorded { replaced: None }),
        "{first:?}"
    );

    let mut sam = consent_for(&tenant, "Contoso", "sam@contoso.com", true);
    sam.oid = Some("sam-oid".into());
    let refused = guarded(
        sam.clone(),
        seal_grant(&v.vault, &tenant, 2, "0.A-s").await,
        None,
    )
    .await;
    let GuardedConsent::Refused(holder) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(
        (holder.version, holder.upn.as_str()),
        (1, "jane@contoso.com")
    );
    assert_eq!(
        (holder.oid, holder.user_name),
        (jane.oid.clone(), jane.user_name.clone())
    );
    assert_eq!(consents().await, 1);
    assert_eq!(partners::next_version(&db, &tenant).await.unwrap(), 2);

    invitations::create(&db, "pinned", Some(&tenant), T0 - 1, T0 + DAY)
        .await
        .unwrap();
    sam.invitation_id = Some("pinned".into());
    let (a, b) = tokio::join!(
        guarded(
            sam.clone(),
            seal_grant(&v.vault, &tenant, 2, "0.A-s2").await,
            Some("pinned")
        ),
        guarded(
            sam.clone(),
            seal_grant(&v.vault, &tenant, 3, "0.A-s3").await,
            Some("pinned")
        ),
    );
    let spent = [&a, &b]
        .iter()
        .filter(|o| matches!(o, GuardedConsent::InvitationSpent))
        .count();
    assert_eq!(spent, 1, "{a:?} {b:?}");
    let Some(GuardedConsent::Recorded {
        replaced: Some((replaced, "pinned")),
    }) = [a, b]
        .into_iter()
        .find(|o| matches!(o, GuardedConsent::Recorded { .. }))
    else {
        panic!("one consent recorded, replacing Jane's grant")
    };
    assert_eq!(replaced.upn, "jane@contoso.com");
    assert_eq!(consents().await, 2);
    let invitation = invitations::get(&db, "pinned").await.unwrap().unwrap();
    assert_eq!(invitation.used_by.as_deref(), Some("sam@contoso.com"));
    let current = partners::get(&db, &tenant)
        .await
        .unwrap()
        .unwrap()
        .grant_version;

    sam.invitation_id = None;
    let again = seal_grant(&v.vault, &tenant, current, "0.A-dup").await;
    let raced = guarded(sam.clone(), again, Some("same user")).await;
    assert!(matches!(raced, GuardedConsent::Concurrent), "{raced:?}");
    assert_eq!(consents().await, 2);

    let refreshed = seal_grant(&v.vault, &tenant, current + 1, "0.A-r").await;
    record_refresh(&db, &tenant, &refreshed, "schedule", T0 + 60)
        .await
        .unwrap();
    let behind: GrantHolder = partners::grant_holder(&db, &tenant).await.unwrap().unwrap();
    assert_eq!(
        (behind.version, behind.upn.as_str()),
        (current + 1, "sam@contoso.com")
    );
    let before = partners::consent_behind_grant(&db, &tenant, 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.upn, "jane@contoso.com");
});

both_backends!(shred_all_then_consent_again, |url| async move {
    let db = open(&url).await;
    let v = local_vault();
    let tenant = new_tenant();
    let bystander = new_tenant();

    let g1 = seal_grant(&v.vault, &tenant, 1, "0.A-v1").await;
    record_consent(
        &db,
        &consent_for(&tenant, "Contoso", "a@contoso.com", true),
        &g1,
        T0,
    )
    .await
    .unwrap();
    let g2 = seal_grant(&v.vault, &tenant, 2, "0.A-v2").await;
    record_refresh(&db, &tenant, &g2, "refresh", T0 + 1)
        .await
        .unwrap();
    let b1 = seal_grant(&v.vault, &bystander, 1, "0.A-bystander").await;
    record_consent(
        &db,
        &consent_for(&bystander, "Bystander", "b@b.com", true),
        &b1,
        T0,
    )
    .await
    .unwrap();

    // Purge: both live versions lose their key material; the partner has no usable grant.
    let t = T0 + DAY;
    assert_eq!(partners::shred_all(&db, &tenant, t).await.unwrap(), 2);
    let raw = raw_grants(&db, &tenant).await;
    assert_eq!(raw.len(), 2);
    assert_shredded(&raw[0], t);
    assert_shredded(&raw[1], t);
    assert!(
        partners::current_grant(&db, &tenant)
            .await
            .unwrap()
            .is_none()
    );
    // Already shredded rows are not counted (or re-stamped) again.
    assert_eq!(partners::shred_all(&db, &tenant, t + 5).await.unwrap(), 0);
    assert_shredded(&raw_grants(&db, &tenant).await[0], t);
    assert_eq!(partners::shred_all(&db, &new_tenant(), t).await.unwrap(), 0);
    // The other partner keeps its grant.
    let kept = partners::current_grant(&db, &bystander)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        open_grant(&v.vault, &bystander, &kept).await,
        "0.A-bystander"
    );

    partners::set_status(
        &db,
        &tenant,
        PartnerStatus::Revoked,
        None,
        "purged by ops",
        t,
    )
    .await
    .unwrap();
    assert_eq!(
        partners::get(&db, &tenant).await.unwrap().unwrap().status,
        PartnerStatus::Revoked
    );

    // Consent again: versions keep counting, the partner is active with a clean status.
    assert_eq!(partners::next_version(&db, &tenant).await.unwrap(), 3);
    let g3 = seal_grant(&v.vault, &tenant, 3, "0.A-v3-after-reconsent").await;
    let t2 = t + DAY;
    record_consent(
        &db,
        &consent_for(&tenant, "Contoso Ltd", "b@contoso.com", false),
        &g3,
        t2,
    )
    .await
    .unwrap();
    let p = partners::get(&db, &tenant).await.unwrap().unwrap();
    assert_eq!(p.status, PartnerStatus::Active);
    assert_eq!((p.status_code, p.status_reason), (None, None));
    assert_eq!(
        (p.display_name.as_str(), p.consented_by.as_str(), p.mfa),
        ("Contoso Ltd", "b@contoso.com", false)
    );
    assert_eq!(
        (p.grant_version, p.consented_at, p.last_refresh_at),
        (3, t2, t2)
    );
    let current = partners::current_grant(&db, &tenant)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(current.version, 3);
    assert_eq!(
        open_grant(&v.vault, &tenant, &current).await,
        "0.A-v3-after-reconsent"
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM consents WHERE tenant_id = $1",
            &tenant
        )
        .await,
        2
    );
});

both_backends!(list_is_sorted_by_name, |url| async move {
    let db = open(&url).await;
    let v = local_vault();
    assert!(partners::list(&db).await.unwrap().is_empty());
    let names = ["Wingtip", "Adatum", "Litware"];
    let mut tenants = Vec::new();
    for name in names {
        let tenant = new_tenant();
        let g = seal_grant(&v.vault, &tenant, 1, "0.A-rt").await;
        record_consent(&db, &consent_for(&tenant, name, "a@x.com", true), &g, T0)
            .await
            .unwrap();
        tenants.push(tenant);
    }
    let listed = partners::list(&db).await.unwrap();
    let listed_names: Vec<_> = listed.iter().map(|p| p.display_name.as_str()).collect();
    assert_eq!(listed_names, ["Adatum", "Litware", "Wingtip"]);
    assert_eq!(listed[0].tenant_id, tenants[1]);
    assert!(
        listed
            .iter()
            .all(|p| p.status == PartnerStatus::Active && p.grant_version == 1)
    );
});

/// Every page of `query` in `sort` order, `limit` rows at a time, following the cursor.
async fn all_pages(db: &Db, mut query: partners::PartnerQuery) -> Vec<partners::ListedPartner> {
    let mut listed = Vec::new();
    loop {
        let page = partners::list_page(db, &query).await.unwrap();
        let Some(last) = page.last() else {
            return listed;
        };
        assert!(page.len() as i64 <= query.limit);
        query.after = Some(query.sort.position_of(&last.partner));
        listed.extend(page);
    }
}

both_backends!(partner_list_filters_sorts_and_pages, |url| async move {
    use partners::{PartnerQuery, PartnerSort, Position};
    let db = open(&url).await;
    let v = local_vault();
    // Two Litwares consented at the same time: every order needs its tenant-id tiebreak.
    let mut tenants = Vec::new();
    for (name, at) in [
        ("Wingtip", T0 + 50),
        ("Litware", T0 + 10),
        ("Northwind 50%_off", T0 + 30),
        ("Contoso 500 off", T0 + 20),
        ("Litware", T0 + 10),
        ("Adatum", T0 + 40),
    ] {
        let tenant = new_tenant();
        let g = seal_grant(&v.vault, &tenant, 1, "0.A-rt").await;
        record_consent(&db, &consent_for(&tenant, name, "a@x.com", true), &g, at)
            .await
            .unwrap();
        tenants.push(tenant);
    }
    partners::set_status(&db, &tenants[0], PartnerStatus::AtRisk, None, "t", T0 + 60)
        .await
        .unwrap();
    partners::set_status(&db, &tenants[5], PartnerStatus::Revoked, None, "t", T0 + 60)
        .await
        .unwrap();
    let everyone = partners::list(&db).await.unwrap();
    let query = |sort, search: Option<&str>, status| PartnerQuery {
        search: search.map(str::to_string),
        status,
        sort,
        after: None,
        limit: 2,
    };
    let ids = |listed: &[partners::ListedPartner]| -> Vec<TenantId> {
        listed.iter().map(|l| l.partner.tenant_id.clone()).collect()
    };
    let expected = |key: &dyn Fn(&partners::Partner, &partners::Partner) -> std::cmp::Ordering| {
        let mut sorted = everyone.clone();
        sorted.sort_by(|a, b| key(a, b));
        sorted.into_iter().map(|p| p.tenant_id).collect::<Vec<_>>()
    };
    let by_name = expected(&|a, b| {
        (&a.display_name, a.tenant_id.as_str()).cmp(&(&b.display_name, b.tenant_id.as_str()))
    });
    let by_expiry = expected(&|a, b| {
        (a.last_refresh_at, a.tenant_id.as_str()).cmp(&(b.last_refresh_at, b.tenant_id.as_str()))
    });
    let by_status = expected(&|a, b| {
        (a.status.as_str(), &a.display_name, a.tenant_id.as_str()).cmp(&(
            b.status.as_str(),
            &b.display_name,
            b.tenant_id.as_str(),
        ))
    });
    let mut by_last_refresh = by_expiry.clone();
    by_last_refresh.reverse();
    for (sort, order) in [
        (PartnerSort::Name, &by_name),
        (PartnerSort::Expiry, &by_expiry),
        (PartnerSort::Status, &by_status),
        (PartnerSort::LastRefresh, &by_last_refresh),
    ] {
        let listed = all_pages(&db, query(sort, None, None)).await;
        assert_eq!(&ids(&listed), order, "{sort:?}");
    }
    let listed = all_pages(&db, query(PartnerSort::Name, None, None)).await;
    let litware = &listed[2];
    assert_eq!(litware.partner.display_name, "Litware");
    assert_eq!(litware.rotate_at, T0 + 10 + ROTATE_AFTER);

    // Search: case-insensitive fragments of name, domain or tenant id; wildcards literal.
    let names = |listed: &[partners::ListedPartner]| -> Vec<String> {
        listed
            .iter()
            .map(|l| l.partner.display_name.clone())
            .collect()
    };
    for (search, found) in [
        ("wINGt", vec!["Wingtip"]),
        ("50%_", vec!["Northwind 50%_off"]),
        ("0%", vec!["Northwind 50%_off"]),
        ("50_", vec![]),
        ("\\", vec![]),
        ("adatum.onmicrosoft", vec!["Adatum"]),
        ("lit", vec!["Litware", "Litware"]),
    ] {
        let listed = all_pages(&db, query(PartnerSort::Name, Some(search), None)).await;
        assert_eq!(names(&listed), found, "search {search:?}");
    }
    let whole_id = tenants[3].as_str().to_string();
    let listed = all_pages(&db, query(PartnerSort::Status, Some(&whole_id), None)).await;
    assert_eq!(ids(&listed), [tenants[3].clone()]);
    let fragment = &tenants[3].as_str()[..8];
    let listed = all_pages(&db, query(PartnerSort::Name, Some(fragment), None)).await;
    assert!(ids(&listed).contains(&tenants[3]));

    // Status filters, alone and with a search.
    let listed = all_pages(
        &db,
        query(PartnerSort::Name, None, Some(PartnerStatus::Active)),
    )
    .await;
    assert_eq!(
        names(&listed),
        ["Contoso 500 off", "Litware", "Litware", "Northwind 50%_off"]
    );
    let at_risk = query(
        PartnerSort::Expiry,
        Some("wing"),
        Some(PartnerStatus::AtRisk),
    );
    assert_eq!(ids(&all_pages(&db, at_risk).await), [tenants[0].clone()]);
    let revoked = query(
        PartnerSort::Name,
        Some("wing"),
        Some(PartnerStatus::Revoked),
    );
    assert!(all_pages(&db, revoked).await.is_empty());

    // A cursor from another order is refused, not misread.
    let mut mixed = query(PartnerSort::Name, None, None);
    mixed.after = Some(Position::Refresh {
        at: T0,
        tenant: tenants[0].clone(),
    });
    assert!(matches!(
        partners::list_page(&db, &mixed).await,
        Err(StorageError::Corrupt(_))
    ));
    assert_eq!(
        ids(&[partners::get_listed(&db, &tenants[1])
            .await
            .unwrap()
            .unwrap()]),
        [tenants[1].clone()]
    );
    assert!(
        partners::get_listed(&db, &new_tenant())
            .await
            .unwrap()
            .is_none()
    );
});

both_backends!(every_read_maps_its_columns, |url| async move {
    use samvault::storage::{ops_users, replicas, sealed};
    let db = open(&url).await;
    let v = local_vault();
    let (a, b) = (new_tenant(), new_tenant());
    for (tenant, name, at) in [(&a, "Adatum", T0), (&b, "Bellows", T0 + 5)] {
        let g = seal_grant(&v.vault, tenant, 1, "0.A-rt").await;
        record_consent(&db, &consent_for(tenant, name, "a@x.com", true), &g, at)
            .await
            .unwrap();
    }
    let g2 = seal_grant(&v.vault, &a, 2, "0.A-rt2").await;
    record_refresh(&db, &a, &g2, "schedule", T0 + 10)
        .await
        .unwrap();
    partners::set_status(
        &db,
        &b,
        PartnerStatus::AtRisk,
        Some("503"),
        "flaky",
        T0 + 20,
    )
    .await
    .unwrap();

    let counts = partners::count_by_status(&db).await.unwrap();
    assert_eq!(
        counts,
        [(PartnerStatus::Active, 1), (PartnerStatus::AtRisk, 1)]
    );
    let mut by_id = [a.clone(), b.clone()];
    by_id.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    let first = partners::page(&db, None, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].tenant_id, by_id[0]);
    let rest = partners::page(&db, Some(&by_id[0]), 10).await.unwrap();
    assert_eq!(
        rest.iter().map(|p| &p.tenant_id).collect::<Vec<_>>(),
        [&by_id[1]]
    );
    let pa = partners::get(&db, &a).await.unwrap().unwrap();
    assert_eq!(
        (
            pa.display_name.as_str(),
            pa.domain.as_deref(),
            pa.mfa,
            pa.grant_version
        ),
        ("Adatum", Some("adatum.onmicrosoft.com"), true, 2)
    );
    assert_eq!(
        (
            pa.consented_by.as_str(),
            pa.consented_at,
            pa.last_refresh_at
        ),
        ("a@x.com", T0, T0 + 10)
    );
    let pb = partners::get(&db, &b).await.unwrap().unwrap();
    assert_eq!(
        (
            pb.status,
            pb.status_code.as_deref(),
            pb.status_reason.as_deref(),
            pb.status_changed_at
        ),
        (PartnerStatus::AtRisk, Some("503"), Some("flaky"), T0 + 20)
    );

    let consents = partners::consents(&db, &a, 10).await.unwrap();
    assert_eq!(consents.len(), 1);
    let c = &consents[0];
    assert_eq!(
        (
            c.upn.as_str(),
            c.oid.as_deref(),
            c.user_name.as_deref(),
            c.mfa
        ),
        (
            "a@x.com",
            Some("00000000-0000-0000-0000-00000000a11c"),
            Some("Alice Admin"),
            true
        )
    );
    assert_eq!(
        (c.amr.as_str(), c.invitation, c.consented_at),
        ("pwd mfa", false, T0)
    );
    assert!(
        c.scopes
            .starts_with("https://api.partnercenter.microsoft.com/")
    );

    let versions = partners::grant_versions(&db, &a, 10).await.unwrap();
    let shape: Vec<_> = versions
        .iter()
        .map(|g| {
            (
                g.version,
                g.source.as_str(),
                g.created_at,
                g.shredded_at,
                g.kek_id.is_some(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (2, "schedule", T0 + 10, None, true),
            (1, "consent", T0, None, true)
        ]
    );

    let changes = partners::status_changes(&db, &b, 10).await.unwrap();
    let shape: Vec<_> = changes
        .iter()
        .map(|c| {
            (
                c.at,
                c.from.as_deref(),
                c.to.as_str(),
                c.code.as_deref(),
                c.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (T0 + 20, Some("active"), "at_risk", Some("503"), "flaky"),
            (T0 + 5, None, "active", None, "consent by a@x.com"),
        ]
    );
    let last = partners::last_status_change(&db).await.unwrap();
    let after = partners::status_changes_after(&db, 0).await.unwrap();
    assert_eq!(after.len(), 3);
    assert_eq!(after[2].id, last);
    assert_eq!(
        (&after[2].tenant_id, after[2].to_status),
        (&b, PartnerStatus::AtRisk)
    );
    assert_eq!(
        (&after[0].tenant_id, after[0].to_status),
        (&a, PartnerStatus::Active)
    );
    assert!(
        partners::status_changes_after(&db, last)
            .await
            .unwrap()
            .is_empty()
    );

    rotation::record_attempt(&db, &a, T0 + 30, "schedule", "transient", Some("503"), 7)
        .await
        .unwrap();
    let attempts = rotation::attempts(&db, &a, 10).await.unwrap();
    let shape: Vec<_> = attempts
        .iter()
        .map(|r| {
            (
                r.at,
                r.source.as_str(),
                r.outcome.as_str(),
                r.code.as_deref(),
                r.duration_ms,
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (T0 + 30, "schedule", "transient", Some("503"), 7),
            (T0 + 10, "schedule", "success", None, 5),
        ]
    );

    // Clients' secrets.
    let (id, _) = clients::issue(&db, &new_client("reader", None), T0)
        .await
        .unwrap();
    let (second, _) = clients::add_secret(&db, &id, T0 + 1)
        .await
        .unwrap()
        .unwrap();
    assert!(
        clients::revoke_secret(&db, &id, &second, T0 + 2)
            .await
            .unwrap()
    );
    let secrets = clients::secrets(&db, &id).await.unwrap();
    assert_eq!(secrets.len(), 2);
    assert_eq!((secrets[0].1, secrets[0].2), (T0, None));
    assert_eq!(secrets[1], (second.clone(), T0 + 1, Some(T0 + 2)));
    let by_client = clients::secrets_by_client(&db).await.unwrap();
    let listed: Vec<_> = by_client[&id]
        .iter()
        .map(|s| (s.id.clone(), s.created_at, s.revoked_at))
        .collect();
    assert_eq!(listed, secrets);
    assert_eq!(clients::revocation_count(&db).await.unwrap(), 1);

    // Replicas: registration, listing, and the reaping of a dead one's leases.
    let replica = |instance: &str, started_at| replicas::Replica {
        instance: instance.to_string(),
        machine: Some("boot:ns".to_string()),
        pid: 42,
        process_start: None,
        started_at,
        seen_at: started_at,
    };
    replicas::heartbeat(&db, &replica("live", T0))
        .await
        .unwrap();
    replicas::heartbeat(&db, &replica("dead", T0 - 5))
        .await
        .unwrap();
    assert_eq!(
        replicas::all(&db).await.unwrap(),
        [replica("dead", T0 - 5), replica("live", T0)]
    );
    assert_eq!(
        replicas::others(&db, "live").await.unwrap(),
        [replica("dead", T0 - 5)]
    );
    assert!(
        rotation::acquire_lease(&db, &a, "dead:1", T0, 60)
            .await
            .unwrap()
    );
    assert_eq!(
        replicas::reap(&db, "dead", T0).await.unwrap(),
        [a.as_str().to_string()]
    );
    replicas::leave(&db, "live").await.unwrap();
    assert!(replicas::all(&db).await.unwrap().is_empty());

    // Ops users, their lockout included.
    let totp = v
        .vault
        .seal(b"JBSWY3DPEHPK3PXP", &ops_users::totp_context("ann"))
        .await
        .unwrap();
    assert!(
        ops_users::create(
            &db,
            "ann",
            ops_users::Role::Operator,
            "$argon2id$x",
            &totp,
            T0
        )
        .await
        .unwrap()
    );
    for i in 0..5 {
        ops_users::record_failure(&db, "ann", T0 + i, 5)
            .await
            .unwrap();
    }
    let ann = ops_users::get(&db, "ann").await.unwrap().unwrap();
    assert_eq!(
        (
            ann.role,
            ann.password_hash.as_str(),
            ann.must_change_password,
            ann.failed_attempts
        ),
        (ops_users::Role::Operator, "$argon2id$x", true, 5)
    );
    assert_eq!(
        (ann.locked_until, ann.created_at, ann.totp_last_step),
        (Some(T0 + 4 + 60), T0, None)
    );
    assert_eq!((ann.last_sign_in_at, ann.disabled_at), (None, None));
    assert_eq!(ann.totp.record.as_bytes(), totp.record.as_bytes());
    assert_eq!(ann.totp.wrapped_key.kek_id, totp.wrapped_key.kek_id);
    assert_eq!(ops_users::list(&db).await.unwrap().len(), 1);

    // Key rotation jobs.
    assert!(sealed::latest_rotation(&db).await.unwrap().is_none());
    let job = sealed::start_rotation(&db, "kek-2", T0).await.unwrap();
    assert_eq!(
        sealed::unfinished_rotation(&db).await.unwrap(),
        Some(job.clone())
    );
    sealed::update_rotation(&db, &job.id, 3, Some(T0 + 9))
        .await
        .unwrap();
    assert!(sealed::unfinished_rotation(&db).await.unwrap().is_none());
    let done = sealed::latest_rotation(&db).await.unwrap().unwrap();
    assert_eq!(
        (done.id, done.target_kek_id.as_str(), done.started_at),
        (job.id, "kek-2", T0)
    );
    assert_eq!((done.finished_at, done.rewrapped), (Some(T0 + 9), 3));
    assert_eq!(sealed::shredded_grants(&db).await.unwrap(), 0);

    // One tenant's requests per client and resource, with the log's window.
    write(
        &db,
        &[
            request(T0 + 1, &id, "issued", true, Some(true)),
            request(T0 + 2, &id, "issued", false, Some(false)),
            request(T0 + 3, &id, "reconsent_required", false, None),
            request(T0 + 4, "gone", "issued", false, Some(true)),
        ],
    )
    .await;
    let tenant = "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01";
    let (counts, window) = requests::tenant_counts(&db, tenant).await.unwrap();
    let shape: Vec<_> = counts
        .iter()
        .map(|t| {
            (
                t.client_id.as_str(),
                t.client_name.as_deref(),
                t.resource.as_str(),
                t.last_at,
            )
        })
        .collect();
    let pc = "https://api.partnercenter.microsoft.com";
    assert_eq!(
        shape,
        [
            (id.as_str(), Some("reader"), pc, T0 + 3),
            ("gone", None, pc, T0 + 4)
        ]
    );
    let expected = RequestCounts {
        requests: 3,
        issued: 2,
        issued_mfa: 1,
        cached: 1,
    };
    assert_eq!(counts[0].counts, expected);
    assert_eq!((window.rows, window.since), (4, Some(T0 + 1)));
    assert!(
        requests::tenant_counts(&db, "nobody")
            .await
            .unwrap()
            .0
            .is_empty()
    );
});

// ---------------------------------------------------------------------------------------
// Dashboard overview aggregates
// ---------------------------------------------------------------------------------------

both_backends!(overview_aggregates, |url| async move {
    let db = open(&url).await;
    let v = local_vault();
    let now = T0 + 200 * DAY + 3_600;
    // Consented (= last refreshed) this many days ago: 90 minus that is the days left.
    let mut tenants = Vec::new();
    for (name, days_ago) in [
        ("Expired", 95),
        ("Four left", 86),
        ("Ten left", 80),
        ("Thirty left", 60),
        ("Fresh", 1),
        ("Revoked", 95),
    ] {
        let tenant = new_tenant();
        let g = seal_grant(&v.vault, &tenant, 1, "0.A-rt").await;
        let at = now - days_ago * DAY;
        partners::record_consent(
            &db,
            &consent_for(&tenant, name, "a@x.com", true),
            &g,
            at,
            at + days_ago * 1_000,
        )
        .await
        .unwrap();
        tenants.push(tenant);
    }
    partners::set_status(&db, &tenants[5], PartnerStatus::Revoked, None, "test", now)
        .await
        .unwrap();
    let (statuses, buckets) = stats::statuses_and_horizon(&db, now).await.unwrap();
    let mut statuses: Vec<(&str, i64)> = statuses.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    statuses.sort();
    assert_eq!(statuses, [("active", 5), ("revoked", 1)]);
    assert_eq!(stats::HORIZON_BUCKETS.len(), buckets.len());
    // expired, 0-7, 8-14, 15-30, 31-60, 61-75, 76-90; the revoked partner is not counted.
    assert_eq!(buckets, [1, 1, 1, 1, 0, 0, 1]);

    for (days_ago, outcome) in [
        (0, "success"),
        (0, "success"),
        (0, "transient"),
        (2, "reconsent_required"),
        (6, "success"),
        (7, "success"), // outside the 7-day window
    ] {
        rotation::record_attempt(
            &db,
            &tenants[0],
            now - days_ago * DAY,
            "schedule",
            outcome,
            None,
            5,
        )
        .await
        .unwrap();
    }
    let days = stats::attempts_by_day(&db, now, 7).await.unwrap();
    assert_eq!(days.len(), 7);
    assert_eq!(days[6].day, now - now % DAY, "the last day is today");
    let figures: Vec<(i64, i64)> = days.iter().map(|d| (d.successes, d.failures)).collect();
    assert_eq!(
        figures,
        [(1, 0), (0, 0), (0, 0), (0, 0), (0, 1), (0, 0), (2, 1)]
    );

    // Rotation order is rotate_at (consent time + days_ago * 1000 s here), usable grants only.
    let due = stats::next_due(&db, 3).await.unwrap();
    let names: Vec<&str> = due.iter().map(|d| d.display_name.as_str()).collect();
    assert_eq!(names, ["Expired", "Four left", "Ten left"]);
    assert_eq!(due[0].tenant_id, tenants[0].as_str());
});

// ---------------------------------------------------------------------------------------
// Integration clients
// ---------------------------------------------------------------------------------------

fn resource(url: &str) -> Resource {
    Resource::parse(url).unwrap()
}

fn new_client(name: &str, partners: Option<Vec<TenantId>>) -> clients::NewClient {
    clients::NewClient {
        name: name.to_string(),
        permissions: vec![clients::Permission::TokensIssue],
        resources: vec![
            resource("https://api.partnercenter.microsoft.com"),
            resource("https://graph.microsoft.com"),
        ],
        partners,
        rate_limit_per_minute: 120,
    }
}

#[test]
fn new_clients_are_validated() {
    use clients::{InvalidClient, NewClient};
    let configured = [resource("https://api.partnercenter.microsoft.com")];
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let pc = strings(&["https://api.partnercenter.microsoft.com/"]);
    let issue = strings(&["tokens:issue", "tokens:issue"]);
    let tenant = new_tenant();
    let parsed = NewClient::parse(
        "  sync  ",
        &issue,
        &pc,
        &strings(&[tenant.as_str(), tenant.as_str()]),
        600,
        &configured,
    )
    .unwrap();
    assert_eq!(parsed.name, "sync");
    assert_eq!(parsed.permissions, vec![clients::Permission::TokensIssue]);
    assert_eq!(parsed.resources, configured.to_vec());
    assert_eq!(parsed.partners, Some(vec![tenant]));
    let check = |name: &str, perms: &[&str], res: &[&str], partners: &[&str], rate: i64| {
        NewClient::parse(
            name,
            &strings(perms),
            &strings(res),
            &strings(partners),
            rate,
            &configured,
        )
        .map(|_| ())
    };
    let pc = "https://api.partnercenter.microsoft.com";
    let long = "x".repeat(101);
    assert_eq!(
        check("", &["tokens:issue"], &[pc], &[], 1),
        Err(InvalidClient::Name)
    );
    assert_eq!(
        check(&long, &["tokens:issue"], &[pc], &[], 1),
        Err(InvalidClient::Name)
    );
    assert_eq!(
        check("a\tb", &["tokens:issue"], &[pc], &[], 1),
        Err(InvalidClient::Name)
    );
    assert_eq!(
        check("a", &[], &[pc], &[], 1),
        Err(InvalidClient::NoPermission)
    );
    assert_eq!(
        check("a", &["admin"], &[pc], &[], 1),
        Err(InvalidClient::UnknownPermission)
    );
    assert_eq!(
        check("a", &["tokens:issue"], &[], &[], 1),
        Err(InvalidClient::NoResource)
    );
    assert_eq!(
        check(
            "a",
            &["tokens:issue"],
            &["https://graph.microsoft.com"],
            &[],
            1
        ),
        Err(InvalidClient::UnknownResource)
    );
    assert_eq!(
        check("a", &["tokens:issue"], &[pc], &["x"], 1),
        Err(InvalidClient::Partner)
    );
    for rate in [0, -1, clients::MAX_RATE_LIMIT_PER_MINUTE + 1] {
        assert_eq!(
            check("a", &["tokens:issue"], &[pc], &[], rate),
            Err(InvalidClient::RateLimit)
        );
    }
    assert_eq!(
        check(
            "a",
            &["partners:read"],
            &[pc],
            &[],
            clients::MAX_RATE_LIMIT_PER_MINUTE
        ),
        Ok(())
    );
}

both_backends!(client_authentication, |url| async move {
    let db = open(&url).await;
    let (id, secret) = clients::issue(&db, &new_client("billing", None), T0)
        .await
        .unwrap();
    let (other_id, other_secret) = clients::issue(&db, &new_client("other", None), T0)
        .await
        .unwrap();
    let secret = secret.expose_secret().to_string();
    let other_secret = other_secret.expose_secret().to_string();
    assert!(secret.starts_with(clients::SECRET_PREFIX));
    assert!(
        secret.len() >= clients::SECRET_PREFIX.len() + 43,
        "256-bit secret"
    );
    assert_ne!(secret, other_secret);
    assert_ne!(id, other_id);

    let client = clients::authenticate(&db, &id, &secret)
        .await
        .unwrap()
        .expect("right secret");
    assert_eq!(client.client_id, id);
    assert_eq!(client.name, "billing");
    assert!(
        clients::authenticate(&db, &id, &format!("{secret}x"))
            .await
            .unwrap()
            .is_none(),
        "wrong secret"
    );
    assert!(
        clients::authenticate(&db, &id, "").await.unwrap().is_none(),
        "empty secret"
    );
    assert!(
        clients::authenticate(&db, &id, &other_secret)
            .await
            .unwrap()
            .is_none(),
        "another client's secret"
    );
    assert!(
        clients::authenticate(&db, &uuid::Uuid::new_v4().to_string(), &secret)
            .await
            .unwrap()
            .is_none(),
        "unknown client"
    );

    // Only the digest is stored; the secret appears in no column.
    let row = sqlx::query("SELECT digest FROM client_secrets WHERE client_id = $1")
        .bind(&id)
        .fetch_one(db.pool())
        .await
        .unwrap();
    let digest: Vec<u8> = row.try_get("digest").unwrap();
    assert_eq!(digest, clients::digest(&secret).to_vec());
    assert_eq!(
        clients::active_secret_digests(&db, &id).await.unwrap(),
        vec![digest.clone()]
    );
    let dump = sqlx::query(
        "SELECT c.client_id, c.name, c.permissions, c.resources, s.id, s.digest FROM clients c JOIN client_secrets s ON s.client_id = c.client_id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(dump.len(), 2);
    let random_part = &secret[clients::SECRET_PREFIX.len()..];
    for r in &dump {
        for col in ["client_id", "name", "permissions", "resources", "id"] {
            let text: String = r.try_get(col).unwrap();
            assert!(
                !text.contains(random_part),
                "client secret in clear in column {col}"
            );
        }
        let stored: Vec<u8> = r.try_get("digest").unwrap();
        assert!(!contains_bytes(&stored, random_part.as_bytes()));
    }

    // Revocation: the client and its secrets stop working; revoking twice reports false.
    let revoke_at = T0 + 60;
    assert!(clients::revoke(&db, &id, revoke_at).await.unwrap());
    assert!(
        clients::authenticate(&db, &id, &secret)
            .await
            .unwrap()
            .is_none(),
        "revoked client"
    );
    assert!(
        clients::active_secret_digests(&db, &id)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        clients::get(&db, &id).await.unwrap().unwrap().revoked_at,
        Some(revoke_at)
    );
    assert!(!clients::revoke(&db, &id, revoke_at + 1).await.unwrap());
    assert_eq!(
        clients::get(&db, &id).await.unwrap().unwrap().revoked_at,
        Some(revoke_at)
    );
    assert!(
        !clients::revoke(&db, "no-such-client", revoke_at)
            .await
            .unwrap()
    );
    // The other client is unaffected.
    assert!(
        clients::authenticate(&db, &other_id, &other_secret)
            .await
            .unwrap()
            .is_some()
    );
});

both_backends!(clients_round_trip_and_scoping, |url| async move {
    let db = open(&url).await;
    let allowed = new_tenant();
    let not_allowed = new_tenant();
    let pc = resource("https://api.partnercenter.microsoft.com");
    let graph = resource("https://graph.microsoft.com");
    let arm = resource("https://management.azure.com");

    let mut scoped = new_client("scoped", Some(vec![allowed.clone()]));
    scoped.permissions = vec![clients::Permission::PartnersRead];
    scoped.resources = vec![graph.clone()];
    scoped.rate_limit_per_minute = 7;
    let (scoped_id, _) = clients::issue(&db, &scoped, T0).await.unwrap();
    let mut everything = new_client("everything", None);
    everything.permissions = vec![
        clients::Permission::TokensIssue,
        clients::Permission::PartnersRead,
    ];
    let (all_id, _) = clients::issue(&db, &everything, T0 + 1).await.unwrap();

    assert!(clients::get(&db, "nope").await.unwrap().is_none());
    let listed = clients::list(&db).await.unwrap();
    let ids: Vec<_> = listed.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(ids, [scoped_id.as_str(), all_id.as_str()], "oldest first");

    let s = clients::get(&db, &scoped_id).await.unwrap().unwrap();
    assert_eq!(s.name, "scoped");
    assert_eq!(s.permissions, [clients::Permission::PartnersRead]);
    assert_eq!(s.resources, std::slice::from_ref(&graph));
    assert_eq!(s.partners, Some(vec![allowed.clone()]));
    assert_eq!(
        (
            s.rate_limit_per_minute,
            s.created_at,
            s.last_used_at,
            s.revoked_at
        ),
        (7, T0, None, None)
    );
    assert!(s.may(clients::Permission::PartnersRead));
    assert!(!s.may(clients::Permission::TokensIssue));
    assert!(s.may_use_resource(&graph));
    assert!(!s.may_use_resource(&pc));
    assert!(s.may_use_partner(&allowed));
    assert!(!s.may_use_partner(&not_allowed));

    let a = clients::get(&db, &all_id).await.unwrap().unwrap();
    assert_eq!(a.partners, None);
    assert!(a.may(clients::Permission::TokensIssue) && a.may(clients::Permission::PartnersRead));
    assert!(a.may_use_resource(&pc) && a.may_use_resource(&graph));
    assert!(!a.may_use_resource(&arm));
    assert!(a.may_use_partner(&allowed) && a.may_use_partner(&not_allowed));

    // An explicit empty partner list means "no partner", not "every partner".
    let (none_id, _) = clients::issue(&db, &new_client("none", Some(vec![])), T0 + 2)
        .await
        .unwrap();
    let n = clients::get(&db, &none_id).await.unwrap().unwrap();
    assert!(
        !n.may_use_partner(&allowed),
        "empty partner list must not widen to all partners"
    );

    clients::touch(&db, &scoped_id, T0 + 99).await.unwrap();
    assert_eq!(
        clients::get(&db, &scoped_id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(T0 + 99)
    );
    assert_eq!(
        clients::get(&db, &all_id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        None
    );
});

// ---------------------------------------------------------------------------------------
// Invitations
// ---------------------------------------------------------------------------------------

both_backends!(invitations_create_get_mark_used, |url| async move {
    let db = open(&url).await;
    let tenant = new_tenant();
    let for_tenant = "a3f1c0de".repeat(8);
    let open_to_all = "b4e2d1ef".repeat(8);

    invitations::create(&db, &for_tenant, Some(&tenant), T0, T0 + 7 * DAY)
        .await
        .unwrap();
    invitations::create(&db, &open_to_all, None, T0, T0 + DAY)
        .await
        .unwrap();
    assert!(
        invitations::create(&db, &for_tenant, None, T0, T0)
            .await
            .is_err(),
        "ids are unique"
    );

    let inv = invitations::get(&db, &for_tenant)
        .await
        .unwrap()
        .expect("invitation");
    assert_eq!(inv.id, for_tenant);
    assert_eq!(inv.tenant_id, Some(tenant.clone()));
    assert_eq!(
        (inv.created_at, inv.expires_at, inv.used_at),
        (T0, T0 + 7 * DAY, None)
    );
    let any = invitations::get(&db, &open_to_all).await.unwrap().unwrap();
    assert_eq!((any.tenant_id, any.expires_at), (None, T0 + DAY));
    assert!(invitations::get(&db, "missing").await.unwrap().is_none());

    invitations::mark_used(&db, &for_tenant, "admin@contoso.com", T0 + 3600)
        .await
        .unwrap();
    assert_eq!(
        invitations::get(&db, &for_tenant)
            .await
            .unwrap()
            .unwrap()
            .used_at,
        Some(T0 + 3600)
    );
    let used_by: Option<String> = sqlx::query("SELECT used_by FROM invitations WHERE id = $1")
        .bind(&for_tenant)
        .fetch_one(db.pool())
        .await
        .unwrap()
        .try_get("used_by")
        .unwrap();
    assert_eq!(used_by.as_deref(), Some("admin@contoso.com"));
    assert_eq!(
        invitations::get(&db, &open_to_all)
            .await
            .unwrap()
            .unwrap()
            .used_at,
        None
    );
});

both_backends!(invitations_list_newest_first_and_expire, |url| async move {
    use invitations::InvitationState;
    let db = open(&url).await;
    let ids: Vec<String> = (0..5).map(|i| format!("{i:064x}")).collect();
    for (i, id) in ids.iter().enumerate() {
        invitations::create(&db, id, None, T0 + i as i64, T0 + DAY)
            .await
            .unwrap();
    }
    let first = invitations::list(&db, 2, 0).await.unwrap();
    let rest = invitations::list(&db, 10, 2).await.unwrap();
    let listed: Vec<&str> = first.iter().chain(&rest).map(|i| i.id.as_str()).collect();
    let newest_first: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest_first);
    assert!(invitations::list(&db, 10, 5).await.unwrap().is_empty());

    // Expiring ends an open invitation once; used ones cannot be expired.
    invitations::mark_used(&db, &ids[1], "admin@contoso.com", T0 + 10)
        .await
        .unwrap();
    assert!(invitations::expire(&db, &ids[0], T0 + 20).await.unwrap());
    assert!(!invitations::expire(&db, &ids[0], T0 + 30).await.unwrap());
    assert!(!invitations::expire(&db, &ids[1], T0 + 20).await.unwrap());
    assert!(!invitations::expire(&db, "missing", T0 + 20).await.unwrap());
    let state = |id: &str| {
        let db = db.clone();
        let id = id.to_string();
        async move {
            invitations::get(&db, &id)
                .await
                .unwrap()
                .unwrap()
                .state(T0 + 20)
        }
    };
    assert_eq!(state(&ids[0]).await, InvitationState::Expired);
    assert_eq!(state(&ids[1]).await, InvitationState::Used);
    assert_eq!(state(&ids[2]).await, InvitationState::Open);
    let used = invitations::get(&db, &ids[1]).await.unwrap().unwrap();
    assert_eq!(used.used_by.as_deref(), Some("admin@contoso.com"));
    assert_eq!(
        invitations::get(&db, &ids[0])
            .await
            .unwrap()
            .unwrap()
            .expires_at,
        T0 + 20
    );
});

// ---------------------------------------------------------------------------------------
// Token request log
// ---------------------------------------------------------------------------------------

async fn write(db: &Db, records: &[RequestRecord]) {
    let mut batch = RequestBatch::default();
    for r in records {
        batch.push(r.clone());
    }
    assert_eq!(batch.requests(), records.len() as i64);
    requests::write_batch(db, &batch).await.unwrap();
}

fn request(at: i64, client: &str, outcome: &str, cached: bool, mfa: Option<bool>) -> RequestRecord {
    RequestRecord {
        at,
        client_id: client.into(),
        tenant_id: "6f3a2a5e-0c1d-4a3b-8f4e-1c2d3e4f5a01".into(),
        customer_tenant_id: None,
        resource: "https://api.partnercenter.microsoft.com".into(),
        purpose: format!("sync {at}").into(),
        outcome: outcome.to_owned().into(),
        cached,
        mfa,
    }
}

both_backends!(
    request_log_keeps_the_latest_rows_and_hourly_counts,
    |url| async move {
        let db = open(&url).await;
        // An old hour; then RECENT + 4 requests in one batch (more than it keeps as rows) and 5
        // in another, in the current hour.
        let old = vec![
            request(T0 - 2 * DAY, "a", "issued", false, Some(true)),
            request(T0 - 2 * DAY + 1, "a", "partner_not_allowed", false, None),
        ];
        write(&db, &old).await;
        let n = RECENT + 4;
        let first: Vec<_> = (0..n)
            .map(|i| request(T0 + i % 3000, "a", "issued", i % 2 == 0, Some(i % 4 != 0)))
            .collect();
        write(&db, &first).await;
        let last: Vec<_> = (0..5)
            .map(|i| request(T0 + 3000 + i, "b", "issued", true, Some(false)))
            .collect();
        write(&db, &last).await;

        // Exactly the newest RECENT rows remain, newest first.
        let rows = requests::latest(&db, 2 * RECENT).await.unwrap();
        assert_eq!(rows.len() as i64, RECENT);
        assert_eq!(rows[0], last[4]);
        assert_eq!(rows[4], last[0]);
        assert_eq!(rows[5], first[(n - 1) as usize]);
        assert_eq!(rows.last().unwrap(), &first[4 + 5]);

        // Counts cover every request, pruned or not, by hour.
        let all = requests::counts_by_client(&db, T0 - 3 * DAY).await.unwrap();
        let a_recent = RequestCounts {
            requests: n,
            issued: n,
            issued_mfa: (0..n).filter(|i| i % 4 != 0).count() as i64,
            cached: (0..n).filter(|i| i % 2 == 0).count() as i64,
        };
        assert_eq!(
            all["a"],
            RequestCounts {
                requests: n + 2,
                issued: n + 1,
                issued_mfa: a_recent.issued_mfa + 1,
                cached: a_recent.cached,
            }
        );
        assert_eq!(
            all["b"],
            RequestCounts {
                requests: 5,
                issued: 5,
                issued_mfa: 0,
                cached: 5
            }
        );
        let since_today = requests::counts_by_client(&db, T0).await.unwrap();
        assert_eq!(
            since_today["a"], a_recent,
            "the old hour is outside the window"
        );
    }
);

// ---------------------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------------------

/// The number of entries, or why the log does not verify.
async fn verified(db: &Db) -> Result<u64, Broken> {
    audit::verify(db, &[]).await.unwrap().map(|v| v.entries)
}

async fn append_three(db: &Db, tenant: &TenantId) {
    let t = Some(tenant.as_str());
    assert_eq!(
        audit::append(
            db,
            "ops:alice",
            "consent",
            t,
            serde_json::json!({"upn": "a@c.com"}),
            T0
        )
        .await
        .unwrap(),
        1
    );
    assert_eq!(
        audit::append(db, "client:billing", "exchange", t, serde_json::json!({"resource": "https://graph.microsoft.com", "purpose": "sync", "cached": false}), T0 + 1)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        audit::append(
            db,
            "system",
            "rotation",
            None,
            serde_json::json!({"due": 3}),
            T0 + 2
        )
        .await
        .unwrap(),
        3
    );
}

both_backends!(audit_chain_appends_and_verifies, |url| async move {
    let db = open(&url).await;
    let tenant = new_tenant();
    assert_eq!(verified(&db).await, Ok(0), "an empty log verifies");
    append_three(&db, &tenant).await;
    assert_eq!(verified(&db).await, Ok(3));

    let recent = audit::recent(&db, 2).await.unwrap();
    assert_eq!(
        recent.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [3, 2],
        "newest first, limited"
    );
    assert_eq!(recent[1].actor, "client:billing");
    assert_eq!(recent[1].action, "exchange");
    assert_eq!(recent[1].tenant_id.as_deref(), Some(tenant.as_str()));
    assert_eq!(recent[1].at, T0 + 1);
    assert_eq!(recent[1].detail["purpose"], "sync");
    assert_eq!(recent[0].tenant_id, None);

    // Each row chains to the previous one.
    let rows = sqlx::query("SELECT prev_hash, hash FROM audit_log ORDER BY seq")
        .fetch_all(db.pool())
        .await
        .unwrap();
    let hashes: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.try_get("prev_hash").unwrap(), r.try_get("hash").unwrap()))
        .collect();
    assert_eq!(hashes[0].0, "0".repeat(64));
    assert_eq!(hashes[1].0, hashes[0].1);
    assert_eq!(hashes[2].0, hashes[1].1);

    // Concurrent appends never fork the chain.
    let mut tasks = Vec::new();
    for i in 0..12 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            audit::append(
                &db,
                "ops:bob",
                "login",
                None,
                serde_json::json!({"n": i}),
                T0 + 10,
            )
            .await
            .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (4..=15).collect::<Vec<i64>>());
    assert_eq!(verified(&db).await, Ok(15));
});

both_backends!(
    audit_verify_detects_a_rewrite_with_recomputed_plain_hashes,
    |url| async move {
        let db = open(&url).await;
        append_three(&db, &new_tenant()).await;
        // Untouched, and with the plain hashes recomputed over unchanged rows: intact or not,
        // the rewrite below must not verify.
        sqlx::query("UPDATE audit_log SET actor = 'ops:mallory', detail = '{}' WHERE seq = 2")
            .execute(db.pool())
            .await
            .unwrap();
        recompute_plain_chain(&db, 2).await;
        assert_eq!(
            verified(&db).await,
            Err(Broken::Entry(2)),
            "a rewrite with recomputed hashes must not verify"
        );
        recompute_plain_chain(&db, 1).await;
        assert_eq!(verified(&db).await, Err(Broken::Entry(1)));
    }
);

both_backends!(audit_verify_detects_an_edited_row, |url| async move {
    let db = open(&url).await;
    append_three(&db, &new_tenant()).await;
    sqlx::query("UPDATE audit_log SET detail = $1 WHERE seq = 2")
        .bind(r#"{"resource":"https://graph.microsoft.com","purpose":"innocent","cached":false}"#)
        .execute(db.pool())
        .await
        .unwrap();
    assert_eq!(verified(&db).await, Err(Broken::Entry(2)));
});

both_backends!(
    audit_verify_detects_an_edited_time_or_actor,
    |url| async move {
        let db = open(&url).await;
        append_three(&db, &new_tenant()).await;
        sqlx::query("UPDATE audit_log SET actor = 'ops:mallory' WHERE seq = 1")
            .execute(db.pool())
            .await
            .unwrap();
        assert_eq!(verified(&db).await, Err(Broken::Entry(1)));
    }
);

both_backends!(audit_verify_detects_a_deleted_row, |url| async move {
    let db = open(&url).await;
    append_three(&db, &new_tenant()).await;
    sqlx::query("DELETE FROM audit_log WHERE seq = 2")
        .execute(db.pool())
        .await
        .unwrap();
    assert_eq!(verified(&db).await, Err(Broken::Entry(3)));
});

both_backends!(audit_verify_detects_a_renumbered_chain, |url| async move {
    // Deleting a row and shifting the later ones down still breaks the links.
    let db = open(&url).await;
    append_three(&db, &new_tenant()).await;
    sqlx::query("DELETE FROM audit_log WHERE seq = 2")
        .execute(db.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET seq = 2 WHERE seq = 3")
        .execute(db.pool())
        .await
        .unwrap();
    assert_eq!(verified(&db).await, Err(Broken::Entry(2)));
});

both_backends!(
    audit_verify_walks_a_long_log_page_by_page,
    |url| async move {
        // More rows than one page of the walk (1,000), and a break on the second page.
        let db = open(&url).await;
        for i in 0..1_205 {
            audit::append(
                &db,
                "test",
                "test.bulk",
                None,
                serde_json::json!({ "i": i }),
                T0 + i,
            )
            .await
            .unwrap();
        }
        assert_eq!(verified(&db).await, Ok(1_205));
        sqlx::query("UPDATE audit_log SET detail = '{}' WHERE seq = 1100")
            .execute(db.pool())
            .await
            .unwrap();
        assert_eq!(verified(&db).await, Err(Broken::Entry(1_100)));
    }
);

both_backends!(
    audit_entries_from_before_the_key_verify_as_the_prefix,
    |url| async move {
        let db = open(&url).await;
        unkeyed_entries(&db, 3).await;
        let db = db.with_audit_chain(test_chain(4));
        append_n(&db, 3).await;
        let verified_ = audit::verify(&db, &[]).await.unwrap().unwrap();
        assert_eq!((verified_.entries, verified_.first_keyed), (6, 4));
        // An unkeyed entry rewritten and the whole chain recomputed: the first keyed entry's
        // MAC covers the last unkeyed hash, so the prefix is sealed too.
        sqlx::query("UPDATE audit_log SET actor = 'ops:mallory' WHERE seq = 2")
            .execute(db.pool())
            .await
            .unwrap();
        recompute_plain_chain(&db, 1).await;
        assert_eq!(verified(&db).await, Err(Broken::Entry(4)));
    }
);

both_backends!(audit_without_the_key_writes_nothing, |url| async move {
    let db = support::open_unaudited(&url).await;
    let refused = audit::append(&db, "cli", "x", None, serde_json::json!({}), T0).await;
    assert!(
        matches!(refused, Err(StorageError::NoAuditKey)),
        "{refused:?}"
    );
    assert!(matches!(
        audit::verify(&db, &[]).await,
        Err(StorageError::NoAuditKey)
    ));
    assert_eq!(
        audit::next_seq(&db).await.unwrap(),
        1,
        "nothing was written"
    );
});

/// The `hash` of entry `seq`.
async fn mac_of(db: &Db, seq: i64) -> String {
    sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = $1")
        .bind(seq)
        .fetch_one(db.pool())
        .await
        .unwrap()
}

async fn append_n(db: &Db, n: i64) {
    for i in 0..n {
        audit::append(
            db,
            "test",
            "test.n",
            None,
            serde_json::json!({ "i": i }),
            T0 + i,
        )
        .await
        .unwrap();
    }
}

both_backends!(
    audit_verify_finds_a_cut_tail_against_the_anchor_file,
    |url| async move {
        let dir = tempfile::tempdir().unwrap();
        let anchor = dir.path().join("audit.anchor");
        let db = support::open_unaudited(&url)
            .await
            .with_audit_chain(test_chain(1).with_anchor(anchor.clone()));
        append_n(&db, 5).await;
        let written = std::fs::read_to_string(&anchor).unwrap();
        assert_eq!(written, format!("5:{}\n", mac_of(&db, 5).await));
        let intact = audit::verify(&db, &[]).await.unwrap().unwrap();
        assert_eq!(intact.entries, 5);
        assert_eq!(intact.heads, [Head::parse(&written).unwrap()]);

        sqlx::query("DELETE FROM audit_log WHERE seq > 3")
            .execute(db.pool())
            .await
            .unwrap();
        assert_eq!(verified(&db).await, Err(Broken::Cut { head: 5, last: 3 }));
        // New entries never move the anchor off a head the log lost.
        append_n(&db, 1).await;
        assert_eq!(std::fs::read_to_string(&anchor).unwrap(), written);
        assert_eq!(verified(&db).await, Err(Broken::Cut { head: 5, last: 4 }));
        append_n(&db, 1).await;
        assert_eq!(std::fs::read_to_string(&anchor).unwrap(), written);
        assert_eq!(verified(&db).await, Err(Broken::Rewritten { head: 5 }));
    }
);

both_backends!(audit_anchor_follows_concurrent_appends, |url| async move {
    // Appends queued behind one anchor write are covered by the next; each returns once
    // a head at least as new as its own is on disk.
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("audit.anchor");
    let db = support::open_unaudited(&url)
        .await
        .with_audit_chain(test_chain(1).with_anchor(anchor.clone()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (db, anchor) = (db.clone(), anchor.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                let seq = audit::append(&db, "t", "t", None, serde_json::json!({ "i": i }), T0)
                    .await
                    .unwrap();
                let on_disk = Head::parse(&std::fs::read_to_string(&anchor).unwrap()).unwrap();
                assert!(on_disk.seq >= seq, "{} < {seq}", on_disk.seq);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let on_disk = Head::parse(&std::fs::read_to_string(&anchor).unwrap()).unwrap();
    assert_eq!(on_disk.seq, 40);
    assert_eq!(verified(&db).await, Ok(40));
});

both_backends!(audit_verify_needs_a_usable_anchor, |url| async move {
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("audit.anchor");
    let db = support::open_unaudited(&url)
        .await
        .with_audit_chain(test_chain(1).with_anchor(anchor.clone()));
    assert_eq!(
        verified(&db).await,
        Ok(0),
        "an empty log needs no anchor yet"
    );
    append_n(&db, 2).await;
    std::fs::remove_file(&anchor).unwrap();
    assert!(
        matches!(verified(&db).await, Err(Broken::Anchor(why)) if why.contains("does not exist"))
    );
    std::fs::write(&anchor, "not an anchor").unwrap();
    assert!(matches!(verified(&db).await, Err(Broken::Anchor(_))));
    // A garbled anchor is evidence too: appends leave it alone.
    append_n(&db, 1).await;
    assert_eq!(std::fs::read_to_string(&anchor).unwrap(), "not an anchor");
});

both_backends!(audit_verify_checks_heads_kept_elsewhere, |url| async move {
    let db = open(&url).await;
    append_three(&db, &new_tenant()).await;
    let head = Head {
        seq: 2,
        mac: mac_of(&db, 2).await,
    };
    let checked = audit::verify(&db, std::slice::from_ref(&head))
        .await
        .unwrap();
    assert_eq!(checked.unwrap().heads, std::slice::from_ref(&head));
    let forged = Head {
        mac: "0".repeat(64),
        ..head.clone()
    };
    assert_eq!(
        audit::verify(&db, &[forged]).await.unwrap(),
        Err(Broken::Rewritten { head: 2 })
    );
    let later = Head { seq: 9, ..head };
    assert_eq!(
        audit::verify(&db, &[later]).await.unwrap(),
        Err(Broken::Cut { head: 9, last: 3 })
    );
});

both_backends!(
    audit_checkpoints_are_queued_as_webhook_events,
    |url| async move {
        let db = support::open_unaudited(&url).await.with_audit_chain(
            test_chain(1).with_checkpoints(2, samvault::notify::audit_checkpoint_body),
        );
        append_n(&db, 5).await;
        let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM webhook_outbox ORDER BY id")
            .fetch_all(db.pool())
            .await
            .unwrap();
        assert_eq!(bodies.len(), 2, "entries 2 and 4");
        for (body, seq) in bodies.iter().zip([2, 4]) {
            let event: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(event["kind"], "audit.checkpoint");
            let head = format!("{seq}:{}", mac_of(&db, seq).await);
            assert_eq!(event["audit_head"], head.as_str());
            let checked = audit::verify(&db, &[Head::parse(&head).unwrap()])
                .await
                .unwrap();
            assert!(checked.is_ok(), "{checked:?}");
        }
    }
);

both_backends!(audit_search_filters_newest_first, |url| async move {
    let db = open(&url).await;
    let (contoso, wingtip) = (new_tenant(), new_tenant());
    for (i, (actor, action, tenant)) in [
        ("cli", "client.create", None),
        ("partner:a@contoso.com", "consent", Some(&contoso)),
        ("client:x", "token.exchange", Some(&contoso)),
        ("client:x", "token.exchange", Some(&wingtip)),
        ("ops:alice", "ops.audit.verify", None),
        ("client:x", "token.exchange", Some(&contoso)),
    ]
    .into_iter()
    .enumerate()
    {
        let at = T0 + i as i64 * DAY;
        audit::append(
            &db,
            actor,
            action,
            tenant.map(TenantId::as_str),
            serde_json::json!({}),
            at,
        )
        .await
        .unwrap();
    }
    let seqs = |filter: audit::AuditFilter, limit: i64| {
        let db = db.clone();
        async move {
            audit::search(&db, &filter, limit)
                .await
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<i64>>()
        }
    };
    let all = audit::AuditFilter::default();
    assert_eq!(seqs(all.clone(), 10).await, [6, 5, 4, 3, 2, 1]);
    assert_eq!(seqs(all.clone(), 2).await, [6, 5], "limited");
    let page_two = audit::AuditFilter {
        before_seq: Some(5),
        ..all.clone()
    };
    assert_eq!(seqs(page_two, 2).await, [4, 3], "keyset paging");
    let exchanges_for_contoso = audit::AuditFilter {
        action: Some("token.exchange".into()),
        tenant_id: Some(contoso.to_string()),
        ..all.clone()
    };
    assert_eq!(seqs(exchanges_for_contoso, 10).await, [6, 3]);
    let by_actor = audit::AuditFilter {
        actor: Some("client:x".into()),
        ..all.clone()
    };
    assert_eq!(seqs(by_actor, 10).await, [6, 4, 3]);
    // From inclusive, until exclusive.
    let days_two_to_four = audit::AuditFilter {
        from: Some(T0 + DAY),
        until: Some(T0 + 4 * DAY),
        ..all.clone()
    };
    assert_eq!(seqs(days_two_to_four, 10).await, [4, 3, 2]);
    let nothing = audit::AuditFilter {
        action: Some("no.such".into()),
        ..all
    };
    assert!(seqs(nothing, 10).await.is_empty());
});

both_backends!(
    consent_mfa_counts_partners_and_lists_those_without,
    |url| async move {
        let db = open(&url).await;
        let v = local_vault();
        assert_eq!(
            requests::consent_mfa(&db, 10).await.unwrap(),
            requests::ConsentMfa::default()
        );
        let (with, without, revoked) = (new_tenant(), new_tenant(), new_tenant());
        for (i, (tenant, name, mfa)) in [
            (&with, "Contoso", true),
            (&without, "Fabrikam", false),
            (&revoked, "Wingtip", false),
        ]
        .into_iter()
        .enumerate()
        {
            let grant = seal_grant(&v.vault, tenant, 1, "0.A-rt").await;
            let upn = format!("admin@{}.com", name.to_lowercase());
            record_consent(
                &db,
                &consent_for(tenant, name, &upn, mfa),
                &grant,
                T0 + i as i64,
            )
            .await
            .unwrap();
        }
        partners::set_status(
            &db,
            &revoked,
            PartnerStatus::Revoked,
            None,
            "purged",
            T0 + 10,
        )
        .await
        .unwrap();
        let report = requests::consent_mfa(&db, 10).await.unwrap();
        assert_eq!(
            (report.with_mfa, report.without_mfa),
            (1, 1),
            "revoked partners left out"
        );
        assert_eq!(
            report.partners_without_mfa,
            [requests::PartnerWithoutMfa {
                tenant_id: without.to_string(),
                display_name: "Fabrikam".into(),
                status: "active".into(),
                consented_by: "admin@fabrikam.com".into(),
                consented_at: T0 + 1,
                amr: Some("pwd".into()),
            }]
        );
        assert!(
            requests::consent_mfa(&db, 0)
                .await
                .unwrap()
                .partners_without_mfa
                .is_empty()
        );
    }
);

// ---------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------

use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::SessionStore;

fn session_record(verifier: &str, expires_in: i64) -> Record {
    let mut data = std::collections::HashMap::new();
    data.insert("pkce_verifier".to_string(), serde_json::json!(verifier));
    data.insert("nonce".to_string(), serde_json::json!("n-0S6_WzA2Mj"));
    Record {
        id: Id::default(),
        data,
        expiry_date: time::OffsetDateTime::from_unix_timestamp(
            samvault::storage::now() + expires_in,
        )
        .unwrap(),
    }
}

/// Every stored session row and session key, as bytes (ids, key ids, wrapped keys,
/// ciphertexts).
async fn raw_sessions(db: &Db) -> Vec<u8> {
    let mut all = Vec::new();
    let rows = sqlx::query("SELECT id, key_id, sealed FROM sessions")
        .fetch_all(db.pool())
        .await
        .unwrap();
    for row in rows {
        for col in ["id", "key_id"] {
            all.extend_from_slice(row.try_get::<String, _>(col).unwrap().as_bytes());
        }
        all.extend_from_slice(&row.try_get::<Vec<u8>, _>("sealed").unwrap());
    }
    let keys = sqlx::query("SELECT id, kek_id, wrapped_key FROM session_keys")
        .fetch_all(db.pool())
        .await
        .unwrap();
    for row in keys {
        for col in ["id", "kek_id"] {
            all.extend_from_slice(row.try_get::<String, _>(col).unwrap().as_bytes());
        }
        all.extend_from_slice(&row.try_get::<Vec<u8>, _>("wrapped_key").unwrap());
    }
    all
}

async fn count_rows(db: &Db, table: &str) -> i64 {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) AS n FROM {table}"
    )))
    .fetch_one(db.pool())
    .await
    .unwrap()
    .try_get("n")
    .unwrap()
}

async fn session_rows(db: &Db) -> i64 {
    count_rows(db, "sessions").await
}

/// A vault over `provider` that counts the wraps and unwraps it asks for.
#[derive(Default)]
struct Counted {
    wraps: std::sync::atomic::AtomicU64,
    unwraps: std::sync::atomic::AtomicU64,
}

struct CountingProvider {
    inner: Arc<dyn samvault::vault::KeyProvider>,
    counted: Arc<Counted>,
}

impl samvault::vault::KeyProvider for CountingProvider {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn current_kek_id(&self) -> String {
        self.inner.current_kek_id()
    }
    fn owns(&self, kek_id: &str) -> bool {
        self.inner.owns(kek_id)
    }
    fn wrap<'a>(
        &'a self,
        key: &'a samvault::vault::DataKey,
    ) -> samvault::vault::BoxFuture<'a, Result<WrappedKey, VaultError>> {
        use std::sync::atomic::Ordering;
        self.counted.wraps.fetch_add(1, Ordering::Relaxed);
        self.inner.wrap(key)
    }
    fn unwrap<'a>(
        &'a self,
        wrapped: &'a WrappedKey,
    ) -> samvault::vault::BoxFuture<'a, Result<samvault::vault::DataKey, VaultError>> {
        use std::sync::atomic::Ordering;
        self.counted.unwraps.fetch_add(1, Ordering::Relaxed);
        self.inner.unwrap(wrapped)
    }
    fn check(&self) -> samvault::vault::BoxFuture<'_, Result<(), VaultError>> {
        self.inner.check()
    }
    fn create_kek(&self) -> samvault::vault::BoxFuture<'_, Result<String, VaultError>> {
        self.inner.create_kek()
    }
    fn refresh(&self) -> samvault::vault::BoxFuture<'_, Result<bool, VaultError>> {
        self.inner.refresh()
    }
    fn refresh_interval(&self) -> std::time::Duration {
        self.inner.refresh_interval()
    }
    fn retire<'a>(
        &'a self,
        kek_id: &'a str,
    ) -> samvault::vault::BoxFuture<'a, Result<bool, VaultError>> {
        self.inner.retire(kek_id)
    }
}

/// A vault over the key file at `key_path` (another process's view of it), counted.
fn counted(key_path: &std::path::Path) -> (Vault, Arc<Counted>) {
    let (provider, _) = samvault::vault::LocalKeyProvider::open_or_create(key_path).unwrap();
    let counted = Arc::new(Counted::default());
    let provider = CountingProvider {
        inner: Arc::new(provider),
        counted: counted.clone(),
    };
    (Vault::new(Arc::new(provider)), counted)
}

impl Counted {
    fn get(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        (
            self.wraps.load(Ordering::Relaxed),
            self.unwraps.load(Ordering::Relaxed),
        )
    }
}

both_backends!(sealed_sessions_round_trip, |url| async move {
    let db = open(&url).await;
    let v = local_vault();
    let store = SealedSessionStore::open(db.clone(), v.vault.clone())
        .await
        .unwrap();
    const VERIFIER: &str = "pkce-verifier-plaintext-Zr8qLw3xYt";

    let mut record = session_record(VERIFIER, 600);
    let original_id = record.id;
    store.create(&mut record).await.unwrap();
    assert_eq!(record.id, original_id, "no collision, the id is kept");
    assert_eq!(store.load(&record.id).await.unwrap(), Some(record.clone()));

    let stored = raw_sessions(&db).await;
    assert_eq!(session_rows(&db).await, 1);
    assert!(
        !contains_bytes(&stored, record.id.to_string().as_bytes()),
        "the session id (the cookie's value) is not stored: a dump must not replay sessions"
    );
    assert!(
        !contains_bytes(&stored, VERIFIER.as_bytes()),
        "session data in clear"
    );
    assert!(
        !contains_bytes(&stored, b"pkce_verifier"),
        "session keys in clear"
    );
    assert!(!contains_bytes(&stored, b"n-0S6_WzA2Mj"), "nonce in clear");

    // save overwrites (upsert), and also inserts a record that was never created.
    record
        .data
        .insert("pkce_verifier".into(), serde_json::json!("second-verifier"));
    store.save(&record).await.unwrap();
    assert_eq!(store.load(&record.id).await.unwrap(), Some(record.clone()));
    let stored = raw_sessions(&db).await;
    assert!(!contains_bytes(&stored, b"second-verifier"));
    let fresh = session_record("third", 600);
    store.save(&fresh).await.unwrap();
    assert_eq!(store.load(&fresh.id).await.unwrap(), Some(fresh.clone()));

    store.delete(&record.id).await.unwrap();
    assert_eq!(store.load(&record.id).await.unwrap(), None);
    assert_eq!(session_rows(&db).await, 1, "only the fresh session is left");
    assert_eq!(
        store.load(&fresh.id).await.unwrap(),
        Some(fresh),
        "other sessions stay"
    );
    assert_eq!(
        store.load(&Id::default()).await.unwrap(),
        None,
        "unknown id"
    );
});

both_backends!(
    sealed_sessions_expire_collide_and_fail_closed,
    |url| async move {
        let db = open(&url).await;
        let v = local_vault();
        let store = SealedSessionStore::open(db.clone(), v.vault.clone())
            .await
            .unwrap();

        // An expired session does not load and is removed by delete_expired.
        let mut expired = session_record("old", -60);
        store.create(&mut expired).await.unwrap();
        let mut live = session_record("live", 600);
        store.create(&mut live).await.unwrap();
        assert_eq!(store.load(&expired.id).await.unwrap(), None);
        assert_eq!(store.delete_expired().await.unwrap(), 1);
        assert_eq!(session_rows(&db).await, 1, "the expired row is gone");
        assert!(store.load(&live.id).await.unwrap().is_some());

        // create never overwrites: on an id collision it draws a new id.
        let mut clash = session_record("clash", 600);
        clash.id = live.id;
        store.create(&mut clash).await.unwrap();
        assert_ne!(clash.id, live.id);
        assert_eq!(
            store.load(&live.id).await.unwrap().unwrap().data["pkce_verifier"],
            "live"
        );
        assert_eq!(
            store.load(&clash.id).await.unwrap().unwrap().data["pkce_verifier"],
            "clash"
        );

        // A sealed row copied under another id does not open (the id is bound as context).
        sqlx::query("UPDATE sessions SET key_id = (SELECT key_id FROM sessions WHERE id = $1), sealed = (SELECT sealed FROM sessions WHERE id = $1) WHERE id = $2")
        .bind(sessions::row_key(&live.id))
        .bind(sessions::row_key(&clash.id))
        .execute(db.pool())
        .await
        .unwrap();
        assert_eq!(store.load(&clash.id).await.unwrap(), None);

        // Another key file cannot open the session key, so neither the sessions; it seals
        // its own sessions under a key of its own.
        let other = local_vault();
        let foreign = SealedSessionStore::open(db.clone(), other.vault.clone())
            .await
            .unwrap();
        assert_eq!(foreign.load(&live.id).await.unwrap(), None);
        assert!(store.load(&live.id).await.unwrap().is_some());
        assert_eq!(count_rows(&db, "session_keys").await, 2);
    }
);

// Sessions are sealed under a session key that costs one wrap where it is made and one
// unwrap in each other process, whatever the number of sessions; a key is rolled when due
// (its sessions still open), forgotten once no session names it, and made again when an
// operator deleted it.
both_backends!(
    session_keys_are_shared_rolled_and_forgotten,
    |url| async move {
        let db = open(&url).await;
        let v = local_vault();
        let (vault, first) = counted(&v.key_path);
        let store = SealedSessionStore::open(db.clone(), vault).await.unwrap();
        let mut records = Vec::new();
        for i in 0..50 {
            let mut record = session_record(&format!("verifier-{i}"), 600);
            store.create(&mut record).await.unwrap();
            records.push(record);
        }
        assert_eq!(
            first.get(),
            (1, 0),
            "one wrap for the key, none per session"
        );

        // Another process (a replica, a restart) unwraps the stored key once.
        let (vault, second) = counted(&v.key_path);
        let replica = SealedSessionStore::open(db.clone(), vault).await.unwrap();
        for record in &records {
            assert_eq!(
                replica.load(&record.id).await.unwrap().as_ref(),
                Some(record)
            );
        }
        assert_eq!(second.get(), (0, 1));
        let sealed = samvault::storage::sealed::count_by_kek(&db).await.unwrap();
        assert_eq!(sealed.len(), 1, "{sealed:?}");
        assert_eq!((sealed[0].what, sealed[0].records), ("session keys", 1));

        // A day later a new key seals new sessions; the old one still opens its own.
        let aged = "UPDATE session_keys SET created_at = created_at - $1";
        sqlx::query(aged)
            .bind(ROLL_AFTER + 1)
            .execute(db.pool())
            .await
            .unwrap();
        store.upkeep().await.unwrap();
        assert_eq!(first.get(), (2, 0));
        let mut newer = session_record("newer", 600);
        store.create(&mut newer).await.unwrap();
        let keys_used = "SELECT COUNT(DISTINCT key_id) AS n FROM sessions";
        let used: i64 = sqlx::query(keys_used)
            .fetch_one(db.pool())
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(used, 2);
        replica.upkeep().await.unwrap();
        assert_eq!(replica.load(&newer.id).await.unwrap(), Some(newer.clone()));
        assert_eq!(second.get(), (0, 2), "the replica took the new key up once");
        assert!(store.load(&records[0].id).await.unwrap().is_some());

        // The old key stays while a session names it, and goes with the last one.
        store.upkeep().await.unwrap();
        assert_eq!(count_rows(&db, "session_keys").await, 2);
        for record in &records {
            store.delete(&record.id).await.unwrap();
        }
        store.upkeep().await.unwrap();
        assert_eq!(count_rows(&db, "session_keys").await, 1);

        // An operator ends every session: a new key at the next upkeep, shared again.
        sqlx::query("DELETE FROM sessions")
            .execute(db.pool())
            .await
            .unwrap();
        sqlx::query("DELETE FROM session_keys")
            .execute(db.pool())
            .await
            .unwrap();
        store.upkeep().await.unwrap();
        assert_eq!(first.get(), (3, 0));
        let mut after = session_record("after", 600);
        store.create(&mut after).await.unwrap();
        assert_eq!(replica.load(&after.id).await.unwrap(), Some(after));
        assert_eq!(count_rows(&db, "session_keys").await, 1);
    }
);

// ---------------------------------------------------------------------------------------
// Rotation bookkeeping: leases, due grants, failures, attempts, alarms
// ---------------------------------------------------------------------------------------

/// A consented partner whose next rotation is due at `rotate_at`.
async fn partner_due_at(db: &Db, vault: &Vault, name: &str, rotate_at: i64) -> TenantId {
    let tenant = new_tenant();
    let g = seal_grant(vault, &tenant, 1, "0.A-rt").await;
    record_consent(db, &consent_for(&tenant, name, "a@x.com", true), &g, T0)
        .await
        .unwrap();
    rotation::postpone(db, &tenant, rotate_at).await.unwrap();
    tenant
}

both_backends!(
    leases_are_exclusive_until_released_or_expired,
    |url| async move {
        let db = open(&url).await;
        let v = local_vault();
        let tenant = partner_due_at(&db, &v.vault, "Contoso", T0).await;
        let now = T0 + 100;

        assert!(
            !rotation::acquire_lease(&db, &new_tenant(), "a", now, 60)
                .await
                .unwrap(),
            "unknown partner"
        );
        assert!(
            rotation::acquire_lease(&db, &tenant, "replica-a", now, 60)
                .await
                .unwrap()
        );
        assert!(
            !rotation::acquire_lease(&db, &tenant, "replica-b", now + 59, 60)
                .await
                .unwrap(),
            "held"
        );
        // Releasing someone else's lease does nothing.
        rotation::release_lease(&db, &tenant, "replica-b")
            .await
            .unwrap();
        assert!(
            !rotation::acquire_lease(&db, &tenant, "replica-b", now + 1, 60)
                .await
                .unwrap()
        );
        // A crashed holder's lease runs out.
        assert!(
            rotation::acquire_lease(&db, &tenant, "replica-b", now + 60, 60)
                .await
                .unwrap(),
            "expired"
        );
        assert!(
            !rotation::acquire_lease(&db, &tenant, "replica-a", now + 61, 60)
                .await
                .unwrap()
        );
        rotation::release_lease(&db, &tenant, "replica-b")
            .await
            .unwrap();
        assert!(
            rotation::acquire_lease(&db, &tenant, "replica-c", now + 61, 60)
                .await
                .unwrap(),
            "released"
        );
    }
);

both_backends!(
    claim_due_takes_the_most_overdue_usable_grant_once,
    |url| async move {
        let db = open(&url).await;
        let v = local_vault();
        let now = T0 + 1_000;
        assert_eq!(
            rotation::next_due_at(&db).await.unwrap(),
            None,
            "no partners"
        );
        assert_eq!(rotation::claim_due(&db, "a", now, 60).await.unwrap(), None);

        let later = partner_due_at(&db, &v.vault, "Later", now - 10).await;
        let oldest = partner_due_at(&db, &v.vault, "Oldest", now - 500).await;
        let not_due = partner_due_at(&db, &v.vault, "NotDue", now + 3_600).await;
        let revoked = partner_due_at(&db, &v.vault, "Revoked", now - 900).await;
        partners::set_status(&db, &revoked, PartnerStatus::Revoked, None, "purged", T0)
            .await
            .unwrap();
        let at_risk = partner_due_at(&db, &v.vault, "AtRisk", now - 100).await;
        partners::set_status(&db, &at_risk, PartnerStatus::AtRisk, None, "horizon", T0)
            .await
            .unwrap();

        assert_eq!(
            rotation::next_due_at(&db).await.unwrap(),
            Some(now - 500),
            "revoked ones do not count"
        );
        assert_eq!(
            rotation::usable_tenants(&db, Some(now)).await.unwrap(),
            [oldest.clone(), at_risk.clone(), later.clone()]
        );
        assert_eq!(
            rotation::usable_tenants(&db, None).await.unwrap(),
            [
                oldest.clone(),
                at_risk.clone(),
                later.clone(),
                not_due.clone()
            ]
        );

        assert_eq!(
            rotation::claim_due(&db, "a", now, 60).await.unwrap(),
            Some(oldest.clone())
        );
        assert_eq!(
            rotation::claim_due(&db, "b", now, 60).await.unwrap(),
            Some(at_risk.clone())
        );
        assert_eq!(
            rotation::claim_due(&db, "a", now, 60).await.unwrap(),
            Some(later.clone())
        );
        assert_eq!(
            rotation::claim_due(&db, "b", now, 60).await.unwrap(),
            None,
            "all due ones are leased"
        );
        // A claimed grant is leased: nobody else may take it directly either.
        assert!(
            !rotation::acquire_lease(&db, &oldest, "c", now + 1, 60)
                .await
                .unwrap()
        );
        // Once the leases run out, the most overdue one comes back first.
        assert_eq!(
            rotation::claim_due(&db, "c", now + 60, 60).await.unwrap(),
            Some(oldest.clone())
        );
        // A successful refresh moves the schedule forward, out of the due set.
        rotation::release_lease(&db, &later, "a").await.unwrap();
        let g2 = seal_grant(&v.vault, &later, 2, "0.A-rt2").await;
        record_refresh(&db, &later, &g2, "rotation", now + 61)
            .await
            .unwrap();
        assert_eq!(
            rotation::usable_tenants(&db, Some(now + 61)).await.unwrap(),
            [oldest, at_risk]
        );
    }
);

both_backends!(concurrent_claims_never_share_a_partner, |url| async move {
    let db = open(&url).await;
    let v = local_vault();
    let now = T0 + 1_000;
    let mut due = Vec::new();
    for i in 0..6 {
        due.push(partner_due_at(&db, &v.vault, &format!("P{i}"), now - 100 + i).await);
    }
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("replica-{worker}");
            let mut mine = Vec::new();
            while let Some(t) = rotation::claim_due(&db, &owner, now, 300).await.unwrap() {
                mine.push(t);
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for task in tasks {
        claimed.extend(task.await.unwrap());
    }
    claimed.sort();
    due.sort();
    assert_eq!(claimed, due, "every due partner claimed exactly once");
});

both_backends!(failures_postpone_and_clamp, |url| async move {
    let db = open(&url).await;
    let v = local_vault();
    let tenant = partner_due_at(&db, &v.vault, "Contoso", T0 + ROTATE_AFTER).await;
    let other = partner_due_at(&db, &v.vault, "Other", T0 + ROTATE_AFTER).await;

    assert_eq!(rotation::failures(&db, &tenant).await.unwrap(), 0);
    assert_eq!(
        rotation::record_failure(&db, &tenant, T0 + 60)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        rotation::record_failure(&db, &tenant, T0 + 180)
            .await
            .unwrap(),
        2
    );
    assert_eq!(rotation::failures(&db, &tenant).await.unwrap(), 2);
    assert_eq!(schedule(&db, &tenant).await, (T0 + 180, 2));
    assert_eq!(
        schedule(&db, &other).await,
        (T0 + ROTATE_AFTER, 0),
        "other partner untouched"
    );
    assert_eq!(
        rotation::record_failure(&db, &new_tenant(), T0)
            .await
            .unwrap(),
        0,
        "unknown partner"
    );
    assert_eq!(rotation::failures(&db, &new_tenant()).await.unwrap(), 0);

    rotation::postpone(&db, &tenant, T0 + 900).await.unwrap();
    assert_eq!(
        schedule(&db, &tenant).await,
        (T0 + 900, 2),
        "postpone counts no failure"
    );

    // Shortening the interval pulls healthy schedules in; backing-off ones keep their deadline.
    rotation::postpone(&db, &tenant, T0 + 30 * DAY)
        .await
        .unwrap();
    assert_eq!(rotation::clamp_schedule(&db, DAY).await.unwrap(), 1);
    assert_eq!(schedule(&db, &other).await, (T0 + DAY, 0));
    assert_eq!(schedule(&db, &tenant).await, (T0 + 30 * DAY, 2));
    assert_eq!(
        rotation::clamp_schedule(&db, DAY).await.unwrap(),
        0,
        "already within"
    );

    rotation::record_attempt(
        &db,
        &tenant,
        T0 + 60,
        "schedule",
        "transient",
        Some("50196"),
        42,
    )
    .await
    .unwrap();
    rotation::record_attempt(&db, &tenant, T0 + 180, "token", "success", None, 7)
        .await
        .unwrap();
    let attempts = sqlx::query(
        "SELECT at, source, outcome, code, duration_ms FROM rotation_attempts WHERE tenant_id = $1 ORDER BY at",
    )
    .bind(tenant.as_str())
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        attempts[0].try_get::<String, _>("outcome").unwrap(),
        "transient"
    );
    assert_eq!(
        attempts[0]
            .try_get::<Option<String>, _>("code")
            .unwrap()
            .as_deref(),
        Some("50196")
    );
    assert_eq!(attempts[0].try_get::<i64, _>("duration_ms").unwrap(), 42);
    assert_eq!(attempts[1].try_get::<String, _>("source").unwrap(), "token");
    assert_eq!(
        attempts[1].try_get::<Option<String>, _>("code").unwrap(),
        None
    );
});

both_backends!(alarms_are_raised_once_and_cleared, |url| async move {
    let db = open(&url).await;
    const NAME: &str = "app_credentials";
    assert!(rotation::alarm(&db, NAME).await.unwrap().is_none());
    assert!(
        !rotation::clear_alarm(&db, NAME).await.unwrap(),
        "nothing to clear"
    );

    assert!(
        rotation::raise_alarm(&db, NAME, Some("7000215"), "invalid client secret", T0)
            .await
            .unwrap()
    );
    // Raising again is not new, keeps `since`, and takes the latest code and detail.
    assert!(
        !rotation::raise_alarm(&db, NAME, Some("7000222"), "client secret expired", T0 + 60)
            .await
            .unwrap()
    );
    let alarm = rotation::alarm(&db, NAME).await.unwrap().expect("raised");
    assert_eq!(alarm.name, NAME);
    assert_eq!(alarm.code.as_deref(), Some("7000222"));
    assert_eq!(alarm.detail, "client secret expired");
    assert_eq!(alarm.since, T0);
    assert!(rotation::alarm(&db, "other").await.unwrap().is_none());

    assert!(rotation::clear_alarm(&db, NAME).await.unwrap());
    assert!(rotation::alarm(&db, NAME).await.unwrap().is_none());
    assert!(
        rotation::raise_alarm(&db, NAME, None, "again", T0 + 120)
            .await
            .unwrap(),
        "new after clear"
    );
    assert_eq!(
        rotation::alarm(&db, NAME).await.unwrap().unwrap().since,
        T0 + 120
    );
});

// ---------------------------------------------------------------------------------------
// Concurrency: writers wait for each other instead of failing or losing updates
// ---------------------------------------------------------------------------------------

both_backends!(
    concurrent_writers_wait_instead_of_failing,
    |url| async move {
        let db = open(&url).await;
        let v = local_vault();
        let tenant = partner_due_at(&db, &v.vault, "Contoso", T0).await;
        let (client_id, _) = clients::issue(&db, &new_client("c", None), T0)
            .await
            .unwrap();

        // Audit appends, status changes (read-then-write transactions) and plain updates, all
        // at once: on SQLite a read-then-write transaction that does not take the write lock
        // up front fails with "database is locked" as soon as another connection writes.
        let mut tasks = Vec::new();
        for i in 0..24i64 {
            let (db, tenant, client_id) = (db.clone(), tenant.clone(), client_id.clone());
            tasks.push(tokio::spawn(async move {
                let mut changed = 0;
                for round in 0..3 {
                    let at = T0 + i * 10 + round;
                    match i % 3 {
                        0 => {
                            audit::append(
                                &db,
                                "ops:a",
                                "login",
                                None,
                                serde_json::json!({"i": i}),
                                at,
                            )
                            .await?;
                        }
                        1 => {
                            let status = if (i + round) % 2 == 0 {
                                PartnerStatus::AtRisk
                            } else {
                                PartnerStatus::Active
                            };
                            let previous =
                                partners::set_status(&db, &tenant, status, None, "t", at).await?;
                            changed += i64::from(previous.is_some());
                        }
                        _ => {
                            clients::touch(&db, &client_id, at).await?;
                            rotation::record_failure(&db, &tenant, at).await?;
                        }
                    }
                }
                Ok::<i64, StorageError>(changed)
            }));
        }
        let mut errors = Vec::new();
        let mut changes_reported = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(changed) => changes_reported += changed,
                Err(e) => errors.push(e.to_string()),
            }
        }
        assert!(errors.is_empty(), "concurrent writes failed: {errors:?}");
        assert_eq!(verified(&db).await, Ok(24));
        assert_eq!(rotation::failures(&db, &tenant).await.unwrap(), 24);

        // Every reported change is recorded once, and each starts where the previous one ended.
        let rows = sqlx::query(
            "SELECT from_status, to_status FROM status_changes WHERE tenant_id = $1 ORDER BY id",
        )
        .bind(tenant.as_str())
        .fetch_all(db.pool())
        .await
        .unwrap();
        assert_eq!(
            rows.len() as i64,
            changes_reported + 1,
            "one row per change, plus the consent"
        );
        for pair in rows.windows(2) {
            let before: String = pair[0].try_get("to_status").unwrap();
            let after: Option<String> = pair[1].try_get("from_status").unwrap();
            assert_eq!(
                after.as_deref(),
                Some(before.as_str()),
                "status history forked"
            );
        }
        let last: String = rows.last().unwrap().try_get("to_status").unwrap();
        let p = partners::get(&db, &tenant).await.unwrap().unwrap();
        assert_eq!(p.status.as_str(), last);
    }
);

/// A redemption's write-back that allocates its version when it commits, as overlapping
/// customer-tenant redemptions need: `n` write-backs of redemptions that all started from
/// the same grant version.
async fn overlapping_write_backs(
    db: &Db,
    vault: &Vault,
    tenant: &TenantId,
    consented_at: i64,
    n: usize,
) -> Vec<(partners::WriteBack, String)> {
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..n {
        let (db, tenant, key) = (
            db.clone(),
            tenant.clone(),
            vault.prepare_key().await.unwrap(),
        );
        writes.spawn(async move {
            let token = format!("0.A-customer-redemption-{i}");
            let seal = |version| key.seal(token.as_bytes(), &grant_context(&tenant, version));
            let attempt = partners::Attempt {
                source: "customer",
                duration_ms: 5,
                lease_owner: "",
            };
            let at = T0 + DAY;
            let kept =
                partners::record_redemption(&db, &tenant, consented_at, seal, &attempt, at, at + 1)
                    .await
                    .unwrap();
            (kept, token)
        });
    }
    writes.join_all().await
}

both_backends!(
    overlapping_write_backs_each_store_their_refresh_token,
    |url| async move {
        let db = open(&url).await;
        let v = local_vault();
        let tenant = new_tenant();
        let g1 = seal_grant(&v.vault, &tenant, 1, "0.A-consented").await;
        let consent = consent_for(&tenant, "Contoso", "jane@contoso.example", true);
        record_consent(&db, &consent, &g1, T0).await.unwrap();

        let written = overlapping_write_backs(&db, &v.vault, &tenant, T0, 20).await;
        let mut versions: Vec<i64> = written
            .iter()
            .map(|(kept, _)| match kept {
                partners::WriteBack::Stored { version } => *version,
                other => panic!("{other:?}"),
            })
            .collect();
        versions.sort();
        assert_eq!(versions, (2..=21).collect::<Vec<i64>>(), "one version each");
        let p = partners::get(&db, &tenant).await.unwrap().unwrap();
        assert_eq!((p.grant_version, p.last_refresh_at), (21, T0 + DAY));
        let current = partners::current_grant(&db, &tenant)
            .await
            .unwrap()
            .unwrap();
        let newest = written
            .iter()
            .find(|(kept, _)| *kept == partners::WriteBack::Stored { version: 21 })
            .unwrap();
        assert_eq!(open_grant(&v.vault, &tenant, &current).await, newest.1);
        let attempts: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM rotation_attempts WHERE tenant_id = $1 AND source = 'customer'",
        )
        .bind(tenant.as_str())
        .fetch_one(db.pool())
        .await
        .unwrap();
        assert_eq!(attempts, 20);

        // Consented again since the redemptions started: the new lineage stays current.
        let g22 = seal_grant(&v.vault, &tenant, 22, "0.A-consented-again").await;
        record_consent(&db, &consent, &g22, T0 + 2 * DAY)
            .await
            .unwrap();
        let late = overlapping_write_backs(&db, &v.vault, &tenant, T0, 3).await;
        assert!(
            late.iter()
                .all(|(k, _)| *k == partners::WriteBack::Superseded)
        );
        let current = partners::current_grant(&db, &tenant)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(current.version, 22);
        // Revoked: nothing is written, whichever consent the redemption started from.
        partners::set_status(
            &db,
            &tenant,
            PartnerStatus::Revoked,
            None,
            "test",
            T0 + 3 * DAY,
        )
        .await
        .unwrap();
        let revoked = overlapping_write_backs(&db, &v.vault, &tenant, T0 + 2 * DAY, 2).await;
        assert!(
            revoked
                .iter()
                .all(|(k, _)| *k == partners::WriteBack::Superseded)
        );
        assert_eq!(raw_grants(&db, &tenant).await.len(), 22);
        // An unknown partner: nothing to write to.
        let nobody = overlapping_write_backs(&db, &v.vault, &new_tenant(), T0, 1).await;
        assert_eq!(nobody[0].0, partners::WriteBack::Superseded);
    }
);

both_backends!(request_log_names_the_customer_tenant, |url| async move {
    let db = open(&url).await;
    let customer = "7b1e0c3a-5d2f-4c8e-9a6b-00000000c001";
    let mut for_customer = request(T0, "c1", "issued", false, Some(true));
    for_customer.customer_tenant_id = Some(customer.into());
    let own = request(T0 + 1, "c1", "issued", true, Some(true));
    write(&db, &[for_customer.clone(), own.clone()]).await;
    assert_eq!(
        requests::latest(&db, 10).await.unwrap(),
        vec![own, for_customer],
        "newest first, the customer tenant kept"
    );
    let counts = requests::counts_by_client(&db, T0).await.unwrap();
    assert_eq!(
        (counts["c1"].issued, counts["c1"].issued_mfa),
        (2, 2),
        "customer tokens count in the MFA share"
    );
});
