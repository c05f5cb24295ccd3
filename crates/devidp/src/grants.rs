//! The simulator's mutable state: codes, refresh tokens, consents, the changes
//! `/_sim/` makes to tenants, users and the app, counters and pending faults.
//!
//! It lives behind one `std::sync::Mutex` in `Inner`. Every method here is
//! synchronous and short (hash lookups, no I/O, no signing), so the lock is
//! never held across an await and 500 concurrent token calls only contend for
//! microseconds each. JWT signing happens after the lock is released.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use axum::http::StatusCode;
use serde::Serialize;
use time::{Duration, OffsetDateTime};

use super::clock::rfc3339;
use super::customers::Customers;
use super::directory::{App, Directory, MfaPolicy, Tenant, User, normalize_resource};
use super::errors::{self, EntraError};
use super::tokens::Subject;

/// Codes live 10 minutes, as Entra's do.
pub const CODE_LIFETIME: Duration = Duration::minutes(10);
/// Entra's default refresh token inactivity window.
pub const RT_INACTIVITY: Duration = Duration::days(90);
/// Redeemed and expired codes are kept this long so reuse still answers 54005/70008.
const CODE_RETENTION: Duration = Duration::hours(1);
const CODE_PURGE_THRESHOLD: usize = 20_000;
/// Client assertion ids remembered at most (expired ones go first).
const MAX_SEEN_JTIS: usize = 100_000;
/// Access and id tokens kept for `/_sim/issued`, each kind; the oldest go first.
const SIGNED_KEPT: usize = 10_000;

pub const GRAPH: &str = "https://graph.microsoft.com";
const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

/// A parsed `scope` parameter: OIDC scopes, and resource-qualified permissions
/// grouped by resource in request order (Entra issues a code's token for the first).
#[derive(Debug, Clone, Default)]
pub struct Scopes {
    pub oidc: BTreeSet<String>,
    pub resources: Vec<(String, Vec<String>)>,
}

impl Scopes {
    pub fn parse(raw: &str) -> Scopes {
        let mut s = Scopes::default();
        for scope in raw.split_whitespace() {
            let lower = scope.to_ascii_lowercase();
            if OIDC_SCOPES.contains(&lower.as_str()) {
                s.oidc.insert(lower);
                continue;
            }
            // `https://host/perm`, `api://id/perm`; a bare permission means Microsoft Graph.
            let (resource, perm) = match scope.rsplit_once('/') {
                Some((r, p)) if !p.is_empty() && is_resource_id(r) => {
                    (normalize_resource(r), p.to_string())
                }
                _ => (GRAPH.to_string(), scope.to_string()),
            };
            match s.resources.iter_mut().find(|(r, _)| *r == resource) {
                Some((_, perms)) => perms.push(perm),
                None => s.resources.push((resource, vec![perm])),
            }
        }
        s
    }

    pub fn single_resource(resource: &str) -> Scopes {
        Scopes {
            oidc: BTreeSet::new(),
            resources: vec![(normalize_resource(resource), vec![".default".into()])],
        }
    }

    pub fn has(&self, oidc: &str) -> bool {
        self.oidc.contains(oidc)
    }
}

#[derive(Debug, Clone)]
pub struct CodeGrant {
    pub tenant_id: String,
    pub upn: String,
    pub client_id: String,
    pub redirect_uri: String,
    /// The PKCE challenge and whether its method is `plain`.
    pub code_challenge: Option<(String, bool)>,
    pub nonce: Option<String>,
    pub scopes: Scopes,
    pub amr: Vec<String>,
    pub auth_time: OffsetDateTime,
    pub issued_at: OffsetDateTime,
    pub redeemed: bool,
}

#[derive(Debug, Clone)]
pub struct RefreshGrant {
    pub token: String,
    pub tenant_id: String,
    pub upn: String,
    pub client_id: String,
    pub amr: Vec<String>,
    /// The interactive sign-in this RT descends from: password resets and
    /// sign-in frequency are judged against it, like Entra's TokensValidFrom.
    pub auth_time: OffsetDateTime,
    pub issued_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
    /// Used for v1 refreshes that name no resource.
    pub primary_resource: Option<String>,
    /// Set only under `--strict-rotation`, at the first redemption: from then on the RT is
    /// dead (reuse detected), or, with `--rotation-grace`, once that many seconds have passed.
    pub dead_from: Option<OffsetDateTime>,
    /// The RT this one was rotated from, whose grace ends when this one is used: only the
    /// immediate predecessor of a live token may be redeemed again (no older generation).
    pub parent: Option<usize>,
    /// One of this RT's successors has been redeemed: its grace is over.
    pub successor_used: bool,
}

#[derive(Debug, Clone)]
struct SignInFrequency {
    set_at: OffsetDateTime,
    max_age: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct AppSecret {
    pub value: String,
    pub expired: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultBody {
    Entra,
    Malformed,
    Html,
    /// No body at all, as a gateway's bare 502 or 504.
    Empty,
}

#[derive(Debug, Clone)]
pub struct Fault {
    /// Calls left to fail; `None` means until cleared (per-tenant faults only).
    pub remaining: Option<u32>,
    /// 200 means a slow success: the call waits `latency_ms`, then is answered normally.
    pub status: StatusCode,
    pub retry_after: Option<u64>,
    pub latency_ms: u64,
    pub body: FaultBody,
    /// The call is processed first (a refresh token redeemed is spent), then delayed and
    /// answered with the fault: a lost or late answer, the case rotation grace exists for.
    pub after_grant: bool,
    /// Optional Entra error to inject instead of the default for `status`.
    pub error: Option<EntraError>,
}

impl Fault {
    /// Uses the fault once: the copy to serve, and whether it is now used up.
    fn take(&mut self) -> (Fault, bool) {
        if let Some(n) = self.remaining.as_mut() {
            *n = n.saturating_sub(1);
        }
        (self.clone(), self.remaining == Some(0))
    }
}

/// `/_sim/counters`. `errors` counts every AADSTS code the simulator answered
/// with, on the token endpoint and the authorize endpoint alike (and injected
/// faults with an Entra body); `faults_served` counts injected faults, global
/// and per-tenant. `sim_tokens` counts grants minted by `POST /_sim/tokens`,
/// which are not token calls and touch no other counter.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub token_calls: BTreeMap<String, u64>,
    /// Token calls per client authentication method: `client_secret`, `client_assertion`
    /// or `none`.
    pub client_auth: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub faults_served: u64,
    pub sim_tokens: u64,
    pub partner_center: PartnerCenterCounters,
}

/// `/_sim/counters` → `partner_center`: every call the stand-in received, by operation
/// (`list`, `consent_create`, `consent_get`, `consent_delete`; faulted and refused calls
/// included, as `token_calls` counts them), the ones answered 2xx, the ones refused by the
/// 50/s limit, the injected faults served, and the refusals by HTTP status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartnerCenterCounters {
    pub calls: BTreeMap<String, u64>,
    pub succeeded: BTreeMap<String, u64>,
    pub throttled: u64,
    pub faulted: u64,
    pub refused: BTreeMap<String, u64>,
}

/// `/_sim/issued`: the codes the authorize endpoint issued (kept as long as reuse is
/// answered) and the newest access and id tokens the token endpoint signed, so a test can
/// look for every one of them where none should be.
#[derive(Debug, Serialize)]
pub struct IssuedView {
    pub codes: Vec<String>,
    pub access_tokens: Vec<String>,
    pub id_tokens: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct GrantView {
    pub tenant_id: String,
    pub upn: String,
    pub client_id: String,
    pub refresh_token: String,
    pub issued_at: String,
    pub last_used_at: Option<String>,
    pub valid: bool,
    /// Why the RT would be refused (an AADSTS code), when it would.
    pub invalid_reason: Option<u32>,
    pub amr: Vec<String>,
}

/// What a successful redemption hands to the token endpoint for signing.
#[derive(Debug, Clone)]
pub struct Issued {
    pub subject: Subject,
    pub resource: String,
    pub permissions: Vec<String>,
    pub refresh_token: Option<String>,
    pub id_token: Option<IdTokenRequest>,
}

#[derive(Debug, Clone)]
pub struct IdTokenRequest {
    pub nonce: Option<String>,
    pub email: bool,
}

pub struct CodeRedemption<'a> {
    pub code: &'a str,
    pub app: &'a App,
    pub redirect_uri: Option<&'a str>,
    pub code_verifier: Option<&'a str>,
    pub path_tenant: Option<&'a str>,
    /// v2 `scope` of the token request (optional for code redemption).
    pub scope: Option<Scopes>,
    /// v1 `resource` of the token request.
    pub resource: Option<String>,
    pub v1: bool,
}

pub struct RefreshRedemption<'a> {
    pub refresh_token: &'a str,
    pub app: &'a App,
    pub path_tenant: Option<&'a str>,
    pub scope: Option<Scopes>,
    pub resource: Option<String>,
    pub strict_rotation: bool,
    /// `--rotation-grace`: how long a spent RT may still be redeemed (0: not at all).
    pub rotation_grace: Duration,
    pub v1: bool,
}

#[derive(Debug)]
pub struct SimState {
    codes: HashMap<String, CodeGrant>,
    rt_index: HashMap<String, usize>,
    rts: Vec<RefreshGrant>,
    /// (tenant id, client id) → resource → consented permissions.
    consents: HashMap<(String, String), BTreeMap<String, BTreeSet<String>>>,
    mfa_required: HashSet<String>,
    deleted_tenants: HashSet<String>,
    tokens_valid_from: HashMap<String, OffsetDateTime>,
    sign_in_frequency: HashMap<String, SignInFrequency>,
    /// Client id → the app's secrets (Entra lets an app hold several at once).
    secrets: HashMap<String, Vec<AppSecret>>,
    /// `{client id}/{jti}` → `exp` of every client assertion accepted and not yet expired.
    seen_jtis: HashMap<String, i64>,
    pub counters: Counters,
    /// Customer tenants of the partners (REFERENCE §6).
    pub customers: Customers,
    fault: Option<Fault>,
    /// Tenant id → fault for that tenant's refresh-token calls (`/_sim/tenants/{id}/faults`).
    tenant_faults: HashMap<String, Fault>,
    /// The newest access tokens and id tokens the token endpoint signed (`/_sim/issued`).
    signed_access_tokens: VecDeque<String>,
    signed_id_tokens: VecDeque<String>,
}

/// Why `POST /_sim/tokens` could not mint for a user.
#[derive(Debug)]
pub enum MintError {
    /// No such user, or the user's tenant was deleted (sign-in answers 50034).
    UnknownUser(String),
    /// What the sign-in or the redemption would have answered (e.g. 50076).
    Entra(EntraError),
}

/// A completed interactive sign-in: who, in which tenant, and how (`amr`).
#[derive(Debug, Clone)]
pub struct SignIn<'d> {
    pub user: &'d User,
    pub tenant: &'d Tenant,
    pub amr: Vec<String>,
}

impl SimState {
    pub fn new(dir: &Directory) -> SimState {
        SimState {
            codes: HashMap::new(),
            rt_index: HashMap::new(),
            rts: Vec::new(),
            consents: HashMap::new(),
            mfa_required: HashSet::new(),
            deleted_tenants: HashSet::new(),
            tokens_valid_from: HashMap::new(),
            sign_in_frequency: HashMap::new(),
            secrets: dir
                .apps()
                .map(|a| {
                    let secret = AppSecret {
                        value: a.secret.clone(),
                        expired: false,
                    };
                    (a.client_id.clone(), vec![secret])
                })
                .collect(),
            seen_jtis: HashMap::new(),
            counters: Counters::default(),
            customers: Customers::from_directory(dir),
            fault: None,
            tenant_faults: HashMap::new(),
            signed_access_tokens: VecDeque::new(),
            signed_id_tokens: VecDeque::new(),
        }
    }

    // ---- counters and faults ----

    /// Counts a token call and takes one pending fault, if any: a global one
    /// first, else, for a refresh-token call, one set on its tenant. Faulted
    /// calls count in `token_calls` too: the client did make them, and tests of
    /// retry logic want to see every attempt.
    ///
    /// A refresh-token call belongs to the tenant its refresh token was issued
    /// in or, when the token is unknown, to the tenant its path names. Both are
    /// hash lookups, so the cost does not grow with the number of tenants.
    pub fn begin_token_call(
        &mut self,
        dir: &Directory,
        grant_type: &str,
        path_tenant: &str,
        refresh_token: Option<&str>,
    ) -> Option<Fault> {
        let label: String = if grant_type.is_empty() {
            "missing".into()
        } else {
            grant_type.chars().take(64).collect()
        };
        *self.counters.token_calls.entry(label).or_default() += 1;
        if let Some(fault) = self.fault.as_mut() {
            let (taken, used_up) = fault.take();
            if used_up {
                self.fault = None;
            }
            self.counters.faults_served += 1;
            return Some(taken);
        }
        if grant_type != "refresh_token" || self.tenant_faults.is_empty() {
            return None;
        }
        // A customer authority's own fault goes first; else the RT's (partner) tenant's.
        let customer = self
            .customers
            .get(path_tenant)
            .map(|c| c.id.clone())
            .filter(|id| self.tenant_faults.contains_key(id));
        let tid = match (customer, refresh_token.and_then(|rt| self.rt_index.get(rt))) {
            (Some(id), _) => id,
            (None, Some(&i)) => self.rts[i].tenant_id.clone(),
            (None, None) => dir.tenant(path_tenant)?.id.clone(),
        };
        let fault = self.tenant_faults.get_mut(&tid)?;
        let (taken, used_up) = fault.take();
        if used_up {
            self.tenant_faults.remove(&tid);
        }
        self.counters.faults_served += 1;
        Some(taken)
    }

    /// Remembers the tokens a token call answered with, for `/_sim/issued`.
    pub fn record_signed(&mut self, access_token: Option<&str>, id_token: Option<&str>) {
        for (kept, token) in [
            (&mut self.signed_access_tokens, access_token),
            (&mut self.signed_id_tokens, id_token),
        ] {
            let Some(token) = token else { continue };
            if kept.len() == SIGNED_KEPT {
                kept.pop_front();
            }
            kept.push_back(token.to_string());
        }
    }

    pub fn issued_view(&self) -> IssuedView {
        IssuedView {
            codes: self.codes.keys().cloned().collect(),
            access_tokens: self.signed_access_tokens.iter().cloned().collect(),
            id_tokens: self.signed_id_tokens.iter().cloned().collect(),
        }
    }

    pub fn count_error(&mut self, code: u32) {
        *self.counters.errors.entry(code.to_string()).or_default() += 1;
    }

    pub fn set_fault(&mut self, fault: Option<Fault>) {
        self.fault = fault.filter(|f| f.remaining != Some(0));
    }

    pub fn pending_faults(&self) -> u32 {
        self.fault.as_ref().and_then(|f| f.remaining).unwrap_or(0)
    }

    /// Replaces or (with `None` or a zero count) clears the fault on one tenant.
    pub fn set_tenant_fault(&mut self, tid: &str, fault: Option<Fault>) {
        match fault.filter(|f| f.remaining != Some(0)) {
            Some(f) => {
                self.tenant_faults.insert(tid.to_string(), f);
            }
            None => {
                self.tenant_faults.remove(tid);
            }
        }
    }

    pub fn tenant_fault(&self, tid: &str) -> Option<&Fault> {
        self.tenant_faults.get(tid)
    }

    // ---- directory overrides from /_sim ----

    pub fn tenant_deleted(&self, tid: &str) -> bool {
        self.deleted_tenants.contains(tid)
    }

    pub fn delete_tenant(&mut self, tid: &str) {
        self.deleted_tenants.insert(tid.to_string());
    }

    pub fn mfa_enforced(&self, dir: &Directory, tid: &str) -> bool {
        self.mfa_required.contains(tid) || dir.tenant(tid).is_some_and(|t| t.mfa.enforced())
    }

    pub fn require_mfa(&mut self, tid: &str) {
        self.mfa_required.insert(tid.to_string());
    }

    /// Every app's consent in the tenant is gone (a customer tenant's too).
    pub fn revoke_consent(&mut self, tid: &str) -> usize {
        let before = self.consents.len();
        self.consents.retain(|(t, _), _| t != tid);
        before - self.consents.len() + self.customers.remove_consents(tid)
    }

    pub fn reset_password(&mut self, upn: &str, now: OffsetDateTime) {
        self.tokens_valid_from.insert(upn.to_string(), now);
    }

    pub fn set_sign_in_frequency(
        &mut self,
        upn: &str,
        now: OffsetDateTime,
        max_age: Option<Duration>,
    ) {
        self.sign_in_frequency.insert(
            upn.to_string(),
            SignInFrequency {
                set_at: now,
                max_age,
            },
        );
    }

    /// Expires the app's secrets: all of them, or the one whose value is `secret`. Returns
    /// how many were expired.
    pub fn expire_secret(&mut self, client_id: Option<&str>, secret: Option<&str>) -> usize {
        let mut n = 0;
        for (id, secrets) in self.secrets.iter_mut() {
            if client_id.is_none_or(|c| c.eq_ignore_ascii_case(id)) {
                for s in secrets
                    .iter_mut()
                    .filter(|s| secret.is_none_or(|v| v == s.value))
                {
                    s.expired = true;
                    n += 1;
                }
            }
        }
        n
    }

    /// Replaces all of the app's secrets with one (clearing any expiry).
    pub fn rotate_secret(&mut self, client_id: &str, secret: String) -> bool {
        self.set_secrets(client_id, |secrets| secrets.clear(), secret)
    }

    /// Adds a secret beside the app's others, as "New client secret" in Entra does.
    pub fn add_secret(&mut self, client_id: &str, secret: String) -> bool {
        self.set_secrets(client_id, |_| {}, secret)
    }

    fn set_secrets(
        &mut self,
        client_id: &str,
        prepare: impl FnOnce(&mut Vec<AppSecret>),
        secret: String,
    ) -> bool {
        match self.secrets.get_mut(client_id) {
            Some(secrets) => {
                prepare(secrets);
                secrets.retain(|s| s.value != secret);
                secrets.push(AppSecret {
                    value: secret,
                    expired: false,
                });
                true
            }
            None => false,
        }
    }

    // ---- client authentication ----

    pub fn count_client_auth(&mut self, method: &str) {
        *self
            .counters
            .client_auth
            .entry(method.to_string())
            .or_default() += 1;
    }

    /// Entra's order: unknown app (700016), no credential (7000218), no secret of the app
    /// matches (7000215), the matching secret is expired (7000222).
    pub fn authenticate_secret<'d>(
        &self,
        dir: &'d Directory,
        client_id: Option<&str>,
        secret: Option<&str>,
        directory_label: &str,
    ) -> Result<&'d App, EntraError> {
        let client_id = client_id.ok_or_else(|| errors::missing_parameter("client_id"))?;
        let app = dir
            .app(client_id)
            .ok_or_else(|| errors::app_not_found(client_id, directory_label))?;
        let secret = secret.ok_or_else(errors::missing_client_credential)?;
        let live = self
            .secrets
            .get(&app.client_id)
            .and_then(|secrets| {
                secrets
                    .iter()
                    .find(|s| constant_time_eq(s.value.as_bytes(), secret.as_bytes()))
            })
            .ok_or_else(|| errors::invalid_client_secret(&app.client_id))?;
        if live.expired {
            return Err(errors::client_secret_expired(&app.client_id));
        }
        Ok(app)
    }

    /// Records an accepted client assertion's `jti` until it expires; a second use is
    /// refused. Expired entries are dropped as the set grows, and the set never holds more
    /// than [`MAX_SEEN_JTIS`] (Entra sets no limit on `exp`).
    pub fn spend_jti(
        &mut self,
        client_id: &str,
        jti: &str,
        exp: i64,
        now: i64,
    ) -> Result<(), EntraError> {
        let key = format!("{client_id}/{jti}");
        if self.seen_jtis.contains_key(&key) {
            return Err(errors::assertion_replayed(jti));
        }
        if self.seen_jtis.len() >= MAX_SEEN_JTIS {
            self.seen_jtis.retain(|_, e| *e > now);
        }
        if self.seen_jtis.len() >= MAX_SEEN_JTIS
            && let Some(oldest) = self
                .seen_jtis
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(k, _)| k.clone())
        {
            self.seen_jtis.remove(&oldest);
        }
        self.seen_jtis.insert(key, exp);
        Ok(())
    }

    // ---- authorize ----

    /// Records the consent a user just gave, one entry per resource.
    pub fn record_consent(&mut self, tid: &str, app: &App, scopes: &Scopes) {
        let entry = self
            .consents
            .entry((tid.to_string(), app.client_id.clone()))
            .or_default();
        for (resource, perms) in &scopes.resources {
            let set = entry.entry(resource.clone()).or_default();
            for perm in perms {
                if perm == ".default" {
                    let statics = app.static_permissions(resource);
                    if statics.is_empty() {
                        set.insert("user_impersonation".into());
                    }
                    set.extend(statics);
                } else {
                    set.insert(perm.clone());
                }
            }
        }
    }

    pub fn insert_code(&mut self, code: String, grant: CodeGrant, now: OffsetDateTime) {
        if self.codes.len() >= CODE_PURGE_THRESHOLD {
            self.codes.retain(|_, c| now - c.issued_at < CODE_RETENTION);
        }
        self.codes.insert(code, grant);
    }

    // ---- token: authorization_code ----

    pub fn redeem_code(
        &mut self,
        dir: &Directory,
        req: CodeRedemption<'_>,
        new_rt: String,
        now: OffsetDateTime,
    ) -> Result<Issued, EntraError> {
        let grant = match self.codes.get(req.code) {
            Some(g) => g.clone(),
            None if req.code.starts_with("1.A") => return Err(errors::invalid_code()),
            None => return Err(errors::malformed_grant()),
        };
        if now - grant.issued_at > CODE_LIFETIME {
            return Err(errors::code_expired());
        }
        if grant.redeemed {
            return Err(errors::code_redeemed());
        }
        if grant.client_id != req.app.client_id {
            return Err(errors::invalid_grant(
                "The code was issued to a different client.",
            ));
        }
        if req.path_tenant.is_some_and(|t| t != grant.tenant_id) {
            return Err(errors::code_wrong_tenant());
        }
        if self.tenant_deleted(&grant.tenant_id) {
            return Err(errors::tenant_not_found(&grant.tenant_id));
        }
        let redirect_uri = req
            .redirect_uri
            .ok_or_else(|| errors::missing_parameter("redirect_uri"))?;
        // A redirect URI the app registration does not have, then one that differs from the
        // authorize request's: both `invalid_client` at Entra, neither about the credential.
        if !super::authorize::loopback_redirect(redirect_uri) {
            return Err(errors::redirect_uri_mismatch(
                redirect_uri,
                &req.app.client_id,
            ));
        }
        if redirect_uri != grant.redirect_uri {
            return Err(errors::reply_address_mismatch(
                redirect_uri,
                &grant.redirect_uri,
            ));
        }
        if let Some((challenge, plain)) = &grant.code_challenge {
            let verifier = req
                .code_verifier
                .ok_or_else(|| errors::missing_parameter("code_verifier"))?;
            let derived = if *plain {
                verifier.to_string()
            } else {
                super::tokens::pkce_s256(verifier)
            };
            if &derived != challenge {
                return Err(errors::pkce_mismatch());
            }
        }
        let target = match (&req.scope, &req.resource) {
            (Some(s), _) if !s.resources.is_empty() => Some(single_target(s, req.scope_raw())?),
            (_, Some(r)) => Some((normalize_resource(r), vec![".default".to_string()])),
            _ => grant.scopes.resources.first().cloned(),
        };
        let issued = self.issue_for_code(dir, &grant, target, req.app, req.v1, new_rt, now)?;
        if let Some(g) = self.codes.get_mut(req.code) {
            g.redeemed = true;
        }
        Ok(issued)
    }

    /// The tokens a valid code yields for `target` (None: OIDC scopes only).
    #[allow(clippy::too_many_arguments)]
    fn issue_for_code(
        &mut self,
        dir: &Directory,
        grant: &CodeGrant,
        target: Option<(String, Vec<String>)>,
        app: &App,
        v1: bool,
        new_rt: String,
        now: OffsetDateTime,
    ) -> Result<Issued, EntraError> {
        let user = dir
            .user(&grant.upn)
            .ok_or_else(|| errors::invalid_grant("The user no longer exists."))?
            .clone();
        let (resource, permissions) = match target {
            Some((resource, perms)) => {
                if self.mfa_enforced(dir, &grant.tenant_id) && !has_mfa(&grant.amr) {
                    return Err(errors::mfa_required(&resource_label(dir, &resource)));
                }
                let granted = self.grant_for(dir, app, &grant.tenant_id, &resource, &perms)?;
                (resource, granted)
            }
            None => oidc_only_target(&grant.scopes),
        };
        let refresh_token = if grant.scopes.has("offline_access") || v1 {
            Some(self.push_rt(RefreshGrant {
                token: new_rt,
                tenant_id: grant.tenant_id.clone(),
                upn: grant.upn.clone(),
                client_id: grant.client_id.clone(),
                amr: grant.amr.clone(),
                auth_time: grant.auth_time,
                issued_at: now,
                last_used_at: None,
                primary_resource: grant.scopes.resources.first().map(|(r, _)| r.clone()),
                dead_from: None,
                parent: None,
                successor_used: false,
            }))
        } else {
            None
        };
        let id_token = grant.scopes.has("openid").then(|| IdTokenRequest {
            nonce: grant.nonce.clone(),
            email: grant.scopes.has("email"),
        });
        Ok(Issued {
            subject: subject(user, &grant.client_id, &grant.amr),
            resource,
            permissions,
            refresh_token,
            id_token,
        })
    }

    // ---- /_sim/tokens: sign-in, consent and redemption in one step ----

    /// The interactive sign-in of `upn` as the authorize endpoint judges it:
    /// unknown users and users of deleted tenants fail; MFA counts only where
    /// the tenant offers it; an MFA-enforcing tenant refuses a sign-in without
    /// it (50076, named after the first requested resource as on the page).
    pub fn sim_sign_in<'d>(
        &self,
        dir: &'d Directory,
        upn: &str,
        mfa: bool,
        scopes: &Scopes,
        app: &App,
    ) -> Result<SignIn<'d>, MintError> {
        let user = dir
            .user(upn)
            .filter(|u| !self.tenant_deleted(&u.tenant_id))
            .ok_or_else(|| MintError::UnknownUser(upn.trim().to_string()))?;
        let tenant = dir
            .tenant(&user.tenant_id)
            .ok_or_else(|| MintError::UnknownUser(upn.trim().to_string()))?;
        let amr = sign_in_amr(tenant.mfa, mfa);
        if self.mfa_enforced(dir, &tenant.id) && !has_mfa(&amr) {
            let target = scopes
                .resources
                .first()
                .map_or(app.client_id.as_str(), |(r, _)| r.as_str());
            let target = resource_label(dir, target);
            return Err(MintError::Entra(
                errors::mfa_required(&target).at_authorize(),
            ));
        }
        Ok(SignIn { user, tenant, amr })
    }

    /// Consent is recorded as the sign-in page records it, then the code the
    /// sign-in would have produced is redeemed as the token endpoint redeems
    /// it (v2, no `scope` parameter: the token is for the first resource).
    pub fn sim_redeem(
        &mut self,
        dir: &Directory,
        sign_in: &SignIn<'_>,
        scopes: &Scopes,
        app: &App,
        new_rt: String,
        now: OffsetDateTime,
    ) -> Result<Issued, EntraError> {
        self.record_consent(&sign_in.tenant.id, app, scopes);
        let grant = CodeGrant {
            tenant_id: sign_in.tenant.id.clone(),
            upn: sign_in.user.upn.clone(),
            client_id: app.client_id.clone(),
            redirect_uri: String::new(),
            code_challenge: None,
            nonce: None,
            scopes: scopes.clone(),
            amr: sign_in.amr.clone(),
            auth_time: now,
            issued_at: now,
            redeemed: false,
        };
        let target = scopes.resources.first().cloned();
        let issued = self.issue_for_code(dir, &grant, target, app, false, new_rt, now)?;
        self.counters.sim_tokens += 1;
        Ok(issued)
    }

    // ---- token: refresh_token ----

    /// Redeems a refresh token at its own tenant's authority, `common`, or the authority of a
    /// customer tenant its partner administers: there the tokens carry the customer's `tid`
    /// (and the partner user's identity) while the relationship lasts and the app is
    /// consented there (else 50020, 65001). Either way the new RT is of the same grant.
    pub fn redeem_refresh(
        &mut self,
        dir: &Directory,
        req: RefreshRedemption<'_>,
        new_rt: String,
        now: OffsetDateTime,
    ) -> Result<Issued, EntraError> {
        let idx = self.refresh_index(req.refresh_token)?;
        let rt = self.rts[idx].clone();
        if rt.client_id != req.app.client_id {
            return Err(errors::invalid_grant(
                "The refresh token was issued to a different client.",
            ));
        }
        let customer = self.customer_authority(req.path_tenant, &rt)?;
        let target = refresh_target(&req, &rt);
        let resource_label = target.as_ref().map_or(GRAPH, |(r, _)| r.as_str());
        self.check_rt_alive(dir, &rt, now, resource_label)?;
        if let Some(customer) = customer {
            self.check_delegated_access(dir, customer, &rt, req.app, resource_label)?;
        }
        let issued_in = customer.unwrap_or(&rt.tenant_id);
        let (resource, permissions) = match target {
            Some((resource, perms)) => {
                let granted = self.grant_for(dir, req.app, issued_in, &resource, &perms)?;
                (resource, granted)
            }
            None => oidc_only_target(req.scope.as_ref().unwrap_or(&Scopes::default())),
        };
        let user = dir
            .user(&rt.upn)
            .ok_or_else(|| errors::invalid_grant("The user no longer exists."))?
            .clone();
        let mut subject = subject(user, &rt.client_id, &rt.amr);
        subject.issued_in = customer.map(str::to_string);
        let refresh_token = self.rotate(idx, &rt, &req, new_rt, now);
        let id_token = req
            .scope
            .as_ref()
            .filter(|s| s.has("openid") && !req.v1)
            .map(|s| IdTokenRequest {
                nonce: None,
                email: s.has("email"),
            });
        Ok(Issued {
            subject,
            resource,
            permissions,
            refresh_token: Some(refresh_token),
            id_token,
        })
    }

    fn refresh_index(&self, token: &str) -> Result<usize, EntraError> {
        match self.rt_index.get(token) {
            Some(&i) => Ok(i),
            None if token.starts_with("0.A") => Err(errors::invalid_refresh_token()),
            None => Err(errors::malformed_grant()),
        }
    }

    /// The customer tenant whose authority the RT is redeemed at, when the path names one
    /// other than the RT's own tenant. Another partner tenant is refused as before.
    fn customer_authority<'s>(
        &'s self,
        path_tenant: Option<&str>,
        rt: &RefreshGrant,
    ) -> Result<Option<&'s str>, EntraError> {
        match path_tenant {
            Some(t) if t != rt.tenant_id => match self.customers.get(t) {
                Some(customer) => Ok(Some(customer.id.as_str())),
                None => Err(errors::invalid_grant(
                    "The refresh token was issued for a different tenant.",
                )),
            },
            _ => Ok(None),
        }
    }

    /// The partner user may act in the customer tenant: it belongs to the user's partner,
    /// the delegated-admin relationship lasts (else 50020), and the customer's own MFA
    /// requirement (`/_sim/tenants/{id}/require-mfa`) is met (else 50076).
    fn check_delegated_access(
        &self,
        dir: &Directory,
        customer_id: &str,
        rt: &RefreshGrant,
        app: &App,
        resource: &str,
    ) -> Result<(), EntraError> {
        let customer = self
            .customers
            .get(customer_id)
            .ok_or_else(|| errors::tenant_not_found(customer_id))?;
        if customer.partner_tenant_id != rt.tenant_id || !customer.relationship_active {
            return Err(errors::user_not_in_tenant(
                &rt.upn,
                &rt.tenant_id,
                &customer.name,
                &app.client_id,
                &app.name,
            ));
        }
        if self.mfa_required.contains(&customer.id) && !has_mfa(&rt.amr) {
            return Err(errors::mfa_required(&resource_label(dir, resource)));
        }
        Ok(())
    }

    /// Spends `rt` (at once under strict rotation, else it stays valid) and issues its
    /// successor in the same grant.
    fn rotate(
        &mut self,
        idx: usize,
        rt: &RefreshGrant,
        req: &RefreshRedemption<'_>,
        new_rt: String,
        now: OffsetDateTime,
    ) -> String {
        let old = &mut self.rts[idx];
        old.last_used_at = Some(now);
        if req.strict_rotation {
            // A second use inside the grace keeps the first use's deadline.
            old.dead_from.get_or_insert(now + req.rotation_grace);
        }
        if let Some(parent) = rt.parent {
            self.rts[parent].successor_used = true;
        }
        self.push_rt(RefreshGrant {
            token: new_rt,
            issued_at: now,
            last_used_at: None,
            dead_from: None,
            parent: Some(idx),
            successor_used: false,
            ..rt.clone()
        })
    }

    /// Checks, in Entra's order, everything that can kill an RT regardless of
    /// the resource asked for. Shared by redemption and the `/_sim/grants` view.
    fn check_rt_alive(
        &self,
        dir: &Directory,
        rt: &RefreshGrant,
        now: OffsetDateTime,
        resource: &str,
    ) -> Result<(), EntraError> {
        if self.tenant_deleted(&rt.tenant_id) {
            return Err(errors::tenant_not_found(&rt.tenant_id));
        }
        if now - rt.issued_at > RT_INACTIVITY {
            return Err(errors::refresh_token_inactive(rt.issued_at));
        }
        if let Some(&valid_from) = self.tokens_valid_from.get(&rt.upn)
            && rt.auth_time < valid_from
        {
            return Err(errors::grant_revoked(rt.auth_time, valid_from));
        }
        if let Some(sif) = self.sign_in_frequency.get(&rt.upn) {
            let dead = match sif.max_age {
                Some(max) => now - rt.auth_time > max,
                None => rt.auth_time < sif.set_at,
            };
            if dead {
                let lifetime = sif
                    .max_age
                    .unwrap_or(sif.set_at - rt.auth_time)
                    .whole_seconds();
                return Err(errors::sign_in_frequency(rt.auth_time, lifetime));
            }
        }
        if rt
            .dead_from
            .is_some_and(|dead| now >= dead || rt.successor_used)
        {
            return Err(errors::refresh_token_reused(rt.issued_at));
        }
        if self.mfa_enforced(dir, &rt.tenant_id) && !has_mfa(&rt.amr) {
            return Err(errors::mfa_required(&resource_label(dir, resource)));
        }
        Ok(())
    }

    /// The permissions a token for `resource` carries, after Entra's checks in its order: a
    /// valid scope (70011), a resource that exists in the tenant (500011), consent (65001),
    /// except that `.default` for a resource the app registration does not list is
    /// `invalid_client` 650057. An app registration listing nothing is not checked.
    fn grant_for(
        &self,
        dir: &Directory,
        app: &App,
        tid: &str,
        resource: &str,
        perms: &[String],
    ) -> Result<Vec<String>, EntraError> {
        if perms.len() > 1 && perms.iter().any(|p| p == ".default") {
            let scope: Vec<String> = perms.iter().map(|p| format!("{resource}/{p}")).collect();
            return Err(errors::invalid_scope(&scope.join(" ")));
        }
        let Some(resource_app_id) = dir.resource_app_id(resource) else {
            let tenant = dir.tenant(tid).map_or(tid, |t| t.name.as_str());
            return Err(errors::resource_not_found(resource, tenant));
        };
        let granted = match self.customers.get(tid) {
            Some(customer) => customer.consented(&app.client_id, &resource_app_id, perms),
            None => self.consented(tid, &app.client_id, resource, perms),
        };
        if let Some(granted) = granted {
            return Ok(granted);
        }
        let registered = app.registered_resources();
        let asks_default = perms.is_empty() || perms.iter().any(|p| p == ".default");
        if asks_default && !registered.is_empty() && !registered.iter().any(|r| r == resource) {
            let listed: Vec<String> = registered
                .iter()
                .map(|r| dir.resource_app_id(r).unwrap_or_else(|| r.clone()))
                .collect();
            return Err(errors::resource_not_registered(
                &app.client_id,
                &app.name,
                resource,
                &resource_app_id,
                &listed,
            ));
        }
        Err(errors::consent_required(&app.client_id, &app.name))
    }

    /// The permissions granted for `resource`, or None when consent is missing.
    /// `.default` (or no permission named) means "everything consented".
    fn consented(
        &self,
        tid: &str,
        client_id: &str,
        resource: &str,
        perms: &[String],
    ) -> Option<Vec<String>> {
        let set = self
            .consents
            .get(&(tid.to_string(), client_id.to_string()))?
            .get(resource)?;
        if set.is_empty() {
            return None;
        }
        if perms.is_empty() || perms.iter().any(|p| p == ".default") {
            return Some(set.iter().cloned().collect());
        }
        perms
            .iter()
            .all(|p| set.iter().any(|s| s.eq_ignore_ascii_case(p)))
            .then(|| perms.to_vec())
    }

    fn push_rt(&mut self, rt: RefreshGrant) -> String {
        let token = rt.token.clone();
        self.rt_index.insert(token.clone(), self.rts.len());
        self.rts.push(rt);
        token
    }

    pub fn grants_view(&self, dir: &Directory, now: OffsetDateTime) -> Vec<GrantView> {
        self.rts
            .iter()
            .map(|rt| {
                let mut reason = self
                    .check_rt_alive(dir, rt, now, GRAPH)
                    .err()
                    .map(|e| e.code);
                let consented = self
                    .consents
                    .get(&(rt.tenant_id.clone(), rt.client_id.clone()))
                    .is_some_and(|c| !c.is_empty());
                if reason.is_none() && !consented {
                    reason = Some(65001);
                }
                GrantView {
                    tenant_id: rt.tenant_id.clone(),
                    upn: rt.upn.clone(),
                    client_id: rt.client_id.clone(),
                    refresh_token: rt.token.clone(),
                    issued_at: rfc3339(rt.issued_at),
                    last_used_at: rt.last_used_at.map(rfc3339),
                    valid: reason.is_none(),
                    invalid_reason: reason,
                    amr: rt.amr.clone(),
                }
            })
            .collect()
    }
}

impl CodeRedemption<'_> {
    fn scope_raw(&self) -> String {
        scope_text(self.scope.as_ref())
    }
}

fn scope_text(s: Option<&Scopes>) -> String {
    let Some(s) = s else { return String::new() };
    let mut parts: Vec<String> = s
        .resources
        .iter()
        .flat_map(|(r, ps)| ps.iter().map(move |p| format!("{r}/{p}")))
        .collect();
    parts.extend(s.oidc.iter().cloned());
    parts.join(" ")
}

/// The resource and permissions a refresh asks for. Resource resolution comes first: a
/// malformed scope is a request error, not a grant one. A scope naming several resources
/// gets a token for the first one (Entra's refresh documentation), unlike a code
/// redemption, which refuses it (28000). None: OIDC scopes only.
fn refresh_target(req: &RefreshRedemption<'_>, rt: &RefreshGrant) -> Option<(String, Vec<String>)> {
    match (&req.scope, &req.resource) {
        (Some(s), _) if !s.resources.is_empty() => Some(s.resources[0].clone()),
        (_, Some(r)) => Some((normalize_resource(r), vec![".default".to_string()])),
        (Some(_), None) if !req.v1 => None,
        _ => rt
            .primary_resource
            .clone()
            .map(|r| (r, vec![".default".to_string()])),
    }
}

/// One resource per token request, as Entra enforces (AADSTS28000).
fn single_target(s: &Scopes, raw: String) -> Result<(String, Vec<String>), EntraError> {
    match s.resources.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(errors::more_than_one_resource(&raw)),
    }
}

/// How Entra names a resource in messages such as 50076's: by its app id when it has one.
fn resource_label(dir: &Directory, resource: &str) -> String {
    dir.resource_app_id(resource)
        .unwrap_or_else(|| resource.to_string())
}

/// A request with only OIDC scopes gets a Graph token for the OIDC scopes, as Entra does.
fn oidc_only_target(scopes: &Scopes) -> (String, Vec<String>) {
    let mut perms: Vec<String> = scopes
        .oidc
        .iter()
        .filter(|s| *s != "offline_access")
        .cloned()
        .collect();
    if perms.is_empty() {
        perms.push("openid".into());
    }
    (GRAPH.to_string(), perms)
}

/// `https://host[/path]`, `api://id` or a bare app id GUID: anything but a scheme alone.
fn is_resource_id(r: &str) -> bool {
    match r.split_once("://") {
        Some((_, rest)) => !rest.trim_matches('/').is_empty(),
        None => !r.is_empty() && !r.contains(':'),
    }
}

/// The `amr` of an interactive sign-in: `fed` for federated tenants, else
/// `pwd`, plus `mfa` when the user approved it. Users of a tenant without an
/// MFA policy have no second factor registered, so they never get `mfa`.
pub fn sign_in_amr(policy: MfaPolicy, mfa_approved: bool) -> Vec<String> {
    let first_factor = if policy == MfaPolicy::Federated {
        "fed"
    } else {
        "pwd"
    };
    let mut amr = vec![first_factor.to_string()];
    if mfa_approved && policy != MfaPolicy::NotEnforced {
        amr.push("mfa".into());
    }
    amr
}

pub fn has_mfa(amr: &[String]) -> bool {
    amr.iter().any(|a| a == "mfa")
}

fn subject(user: User, client_id: &str, amr: &[String]) -> Subject {
    Subject {
        global_admin: user.role == "Global Admin",
        user,
        client_id: client_id.to_string(),
        amr: amr.to_vec(),
        issued_in: None,
    }
}

/// The secret check must not leak, through timing, how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_parsing() {
        let s = Scopes::parse(
            "https://api.partnercenter.microsoft.com/user_impersonation offline_access openid profile User.Read",
        );
        assert!(s.has("offline_access") && s.has("openid") && s.has("profile"));
        assert_eq!(
            s.resources,
            vec![
                (
                    "https://api.partnercenter.microsoft.com".to_string(),
                    vec!["user_impersonation".to_string()]
                ),
                (GRAPH.to_string(), vec!["User.Read".to_string()]),
            ]
        );
        let d = Scopes::parse("https://management.azure.com//.default");
        assert_eq!(d.resources[0].0, "https://management.azure.com");
    }
}
