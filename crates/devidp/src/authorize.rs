//! The authorize endpoint: a sign-in + consent page, and its submission.
//!
//! One page stands in for Entra's several (account, password, MFA, consent) so
//! a script can drive it with one form POST: the original query travels in
//! hidden fields, plus `upn`, `mfa=on` and `consent=accept|deny`.
//!
//! As in Entra, problems with the client or the redirect URI are shown on a
//! page (redirecting would hand an attacker an open redirector); everything
//! after that goes back to the app as `error=...` on the redirect URI.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::directory::{App, MfaPolicy, Tenant, User};
use super::errors::{self, EntraError, RequestIds};
use super::grants::{CodeGrant, Scopes, has_mfa, sign_in_amr};
use super::tokens::new_code;
use super::{AppState, Params, PathTenant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseMode {
    Query,
    Fragment,
    FormPost,
}

/// A request whose client and redirect URI are known good: from here on,
/// errors go back to the app.
struct AuthRequest<'a> {
    tenant: PathTenant<'a>,
    app: &'a App,
    redirect_uri: String,
    mode: ResponseMode,
    state: Option<String>,
}

pub async fn get_v2(
    State(st): State<AppState>,
    Path(tenant): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    show(&st, &tenant, query_params(q), Version::V2, &headers)
}

pub async fn get_v1(
    State(st): State<AppState>,
    Path(tenant): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    show(&st, &tenant, query_params(q), Version::V1, &headers)
}

pub async fn post_v2(
    State(st): State<AppState>,
    Path(tenant): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = query_params(q).merged(Params::parse(&body));
    submit(&st, &tenant, params, Version::V2, &headers)
}

pub async fn post_v1(
    State(st): State<AppState>,
    Path(tenant): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = query_params(q).merged(Params::parse(&body));
    submit(&st, &tenant, params, Version::V1, &headers)
}

fn query_params(q: Option<String>) -> Params {
    Params::parse(q.unwrap_or_default().as_bytes())
}

/// GET: validate, then render the sign-in + consent page.
fn show(st: &AppState, tenant: &str, params: Params, v: Version, headers: &HeaderMap) -> Response {
    let ids = RequestIds::new(headers);
    let req = match validate(st, tenant, &params, v, &ids) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    // No session cookie exists in the simulator, so a silent request cannot succeed.
    if params.get("prompt") == Some("none") {
        return error_redirect(st, &req, errors::login_required(), &ids);
    }
    page(st, tenant, &req, &params, v, None, StatusCode::OK)
}

/// POST: the user's answer.
fn submit(
    st: &AppState,
    tenant: &str,
    params: Params,
    v: Version,
    headers: &HeaderMap,
) -> Response {
    let ids = RequestIds::new(headers);
    let req = match validate(st, tenant, &params, v, &ids) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let notice = |text: &str| {
        let notice = Some(Notice::Plain(text.to_string()));
        page(
            st,
            tenant,
            &req,
            &params,
            v,
            notice,
            StatusCode::BAD_REQUEST,
        )
    };
    let consent = params.get("consent");
    let Some(upn) = params.get("upn").map(str::trim) else {
        if consent == Some("deny") {
            return error_redirect(st, &req, errors::user_declined(), &ids);
        }
        return notice(
            "Enter your account's user principal name (for example jane@contoso.example).",
        );
    };
    if !matches!(consent, Some("accept" | "deny")) {
        return notice("Choose Accept or Cancel.");
    }
    let (user, home) = match signing_in(st, tenant, &req, &params, v, upn) {
        Ok(found) => found,
        Err(page) => return page,
    };
    let scopes = requested_scopes(&params, v);
    // Users of a tenant without an MFA policy have no second factor registered (John of
    // Fabrikam): ticking the box cannot produce an `mfa` claim for them.
    let amr = sign_in_amr(home.mfa, params.get("mfa") == Some("on"));
    let dir = st.idp.directory();
    if st.idp.lock().mfa_enforced(dir, &home.id) && !has_mfa(&amr) {
        let target = scopes
            .resources
            .first()
            .map_or(req.app.client_id.clone(), |(r, _)| r.clone());
        let target = dir.resource_app_id(&target).unwrap_or(target);
        return error_redirect(st, &req, errors::mfa_required(&target), &ids);
    }
    if consent == Some("deny") {
        return error_redirect(st, &req, errors::user_declined(), &ids);
    }
    let now = st.idp.now();
    let grant = CodeGrant {
        tenant_id: home.id.clone(),
        upn: user.upn.clone(),
        client_id: req.app.client_id.clone(),
        redirect_uri: req.redirect_uri.clone(),
        code_challenge: params.get("code_challenge").map(|challenge| {
            let plain = params.get("code_challenge_method") != Some("S256");
            (challenge.to_string(), plain)
        }),
        nonce: params.get("nonce").map(str::to_string),
        scopes,
        amr,
        auth_time: now,
        issued_at: now,
        redeemed: false,
    };
    issue_code(st, &req, grant)
}

/// The account signing in, and its home tenant; a page with 50034 or 50020 when it cannot
/// sign in here.
fn signing_in<'d>(
    st: &'d AppState,
    tenant: &str,
    req: &AuthRequest<'_>,
    params: &Params,
    v: Version,
    upn: &str,
) -> Result<(&'d User, &'d Tenant), Response> {
    let dir = st.idp.directory();
    let user = dir
        .user(upn)
        .filter(|u| !st.idp.lock().tenant_deleted(&u.tenant_id));
    let Some(user) = user else {
        let e = errors::user_not_found(upn, req.tenant.label());
        return Err(page_error(st, tenant, req, params, v, e));
    };
    let home = dir
        .tenant(&user.tenant_id)
        .expect("users belong to known tenants");
    // A customer tenant has no users of its own: a partner's user reaches it only through a
    // refresh token redeemed at its authority (interactive sign-in there is not simulated).
    if let Some(id) = req.tenant.id()
        && id != user.tenant_id
    {
        let e = errors::user_not_in_tenant(
            upn,
            &user.tenant_id,
            req.tenant.label(),
            &req.app.client_id,
            &req.app.name,
        );
        return Err(page_error(st, tenant, req, params, v, e));
    }
    Ok((user, home))
}

/// Records the consent, keeps the code and sends it back to the app.
fn issue_code(st: &AppState, req: &AuthRequest<'_>, grant: CodeGrant) -> Response {
    let code = new_code();
    {
        let mut state = st.idp.lock();
        state.record_consent(&grant.tenant_id, req.app, &grant.scopes);
        let now = grant.issued_at;
        state.insert_code(code.clone(), grant, now);
    }
    let mut out = vec![("code", code)];
    if let Some(s) = &req.state {
        out.push(("state", s.clone()));
    }
    out.push(("session_state", uuid::Uuid::new_v4().to_string()));
    redirect(&req.redirect_uri, req.mode, &out)
}

fn requested_scopes(params: &Params, v: Version) -> Scopes {
    let mut scopes = Scopes::parse(params.get("scope").unwrap_or(""));
    if v == Version::V1 {
        // v1 names one resource; a missing one means Azure AD Graph, as in Entra's v1 endpoint.
        let resource = params
            .get("resource")
            .unwrap_or("https://graph.windows.net");
        let mut single = Scopes::single_resource(resource);
        single.oidc = scopes.oidc;
        scopes = single;
    }
    scopes
}

/// Entra's validation order: tenant, client, redirect URI (all shown on a page),
/// then the rest (sent back to the app).
fn validate<'a>(
    st: &'a AppState,
    tenant: &str,
    params: &Params,
    v: Version,
    ids: &RequestIds,
) -> Result<AuthRequest<'a>, Response> {
    let path_tenant = st
        .idp
        .path_tenant(tenant)
        .map_err(|e| error_page(st, e, ids))?;
    let client_id = params
        .get("client_id")
        .ok_or_else(|| error_page(st, errors::missing_parameter("client_id"), ids))?;
    let app = st.idp.directory().app(client_id).ok_or_else(|| {
        error_page(
            st,
            errors::app_not_found(client_id, path_tenant.label()),
            ids,
        )
    })?;
    let redirect_uri = params
        .get("redirect_uri")
        .ok_or_else(|| error_page(st, errors::missing_parameter("redirect_uri"), ids))?;
    if !loopback_redirect(redirect_uri) {
        return Err(error_page(
            st,
            errors::redirect_uri_mismatch(redirect_uri, &app.client_id),
            ids,
        ));
    }
    let mut req = AuthRequest {
        tenant: path_tenant,
        app,
        redirect_uri: redirect_uri.to_string(),
        mode: ResponseMode::Query,
        state: params.get("state").map(str::to_string),
    };
    req.mode = match params.get("response_mode") {
        None | Some("query") => ResponseMode::Query,
        Some("fragment") => ResponseMode::Fragment,
        Some("form_post") => ResponseMode::FormPost,
        Some(other) => {
            return Err(error_redirect(
                st,
                &req,
                errors::invalid_response_mode(other),
                ids,
            ));
        }
    };
    let fail = |e: EntraError| Err(error_redirect(st, &req, e, ids));
    match params.get("response_type") {
        Some("code") => {}
        None => return fail(errors::missing_parameter("response_type")),
        Some(other) => return fail(errors::unsupported_response_type(other)),
    }
    if v == Version::V2 && params.get("scope").is_none() {
        return fail(errors::missing_parameter("scope"));
    }
    // PKCE is optional for confidential clients (as in Entra). Entra takes `S256` and
    // `plain`, and a challenge without a method is plain (v2-oauth2-auth-code-flow).
    if let Some(challenge) = params.get("code_challenge") {
        if !matches!(
            params.get("code_challenge_method"),
            None | Some("S256" | "plain")
        ) {
            return fail(errors::invalid_challenge_method());
        }
        // RFC 7636: 43 to 128 characters (an S256 challenge is always 43).
        if !(43..=128).contains(&challenge.len()) {
            return fail(errors::invalid_challenge_size());
        }
    }
    Ok(req)
}

/// The demo app accepts any loopback redirect URI, per REFERENCE §5.2.
pub(crate) fn loopback_redirect(uri: &str) -> bool {
    let Ok(url) = url::Url::parse(uri) else {
        return false;
    };
    matches!(url.scheme(), "http" | "https")
        && url.fragment().is_none()
        && matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))
}

fn count(st: &AppState, e: &EntraError) {
    st.idp.lock().count_error(e.code);
}

/// An error the app never sees: shown to the user, like Entra's "Sorry, but we're
/// having trouble signing you in" page.
fn error_page(st: &AppState, e: EntraError, ids: &RequestIds) -> Response {
    count(st, &e);
    let now = st.idp.now();
    let body = format!(
        "{head}<main><h1>Sorry, but we&#39;re having trouble signing you in.</h1>\
         <p class=\"error\" role=\"alert\" data-aadsts=\"{code}\">AADSTS{code}: {msg}</p>\
         <dl><dt>Request Id</dt><dd>{trace}</dd><dt>Correlation Id</dt><dd>{corr}</dd>\
         <dt>Timestamp</dt><dd>{ts}</dd></dl>\
         <p><a href=\"{base}/error?code={code}\">More details about AADSTS{code}</a></p>{foot}</main></body></html>",
        head = head("Sign in to your account"),
        code = e.code,
        msg = escape(&e.message),
        trace = escape(&ids.trace_id),
        corr = escape(&ids.correlation_id),
        ts = super::clock::entra_timestamp(now),
        base = escape(&st.base),
        foot = FOOTER,
    );
    with_page_headers((StatusCode::BAD_REQUEST, Html(body)).into_response())
}

/// On redirects Entra sends `error`, `error_description`, `error_uri` and `state`.
fn error_redirect(
    st: &AppState,
    req: &AuthRequest<'_>,
    e: EntraError,
    ids: &RequestIds,
) -> Response {
    count(st, &e);
    let e = e.at_authorize();
    let mut out = vec![
        ("error", e.error.to_string()),
        ("error_description", e.description(ids, st.idp.now())),
        ("error_uri", e.error_uri(&st.base)),
    ];
    if let Some(s) = &req.state {
        out.push(("state", s.clone()));
    }
    redirect(&req.redirect_uri, req.mode, &out)
}

fn redirect(redirect_uri: &str, mode: ResponseMode, params: &[(&str, String)]) -> Response {
    let encoded = {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            ser.append_pair(k, v);
        }
        ser.finish()
    };
    match mode {
        ResponseMode::FormPost => {
            let fields: String = params
                .iter()
                .map(|(k, v)| {
                    format!(
                        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                        escape(k),
                        escape(v)
                    )
                })
                .collect();
            let body = format!(
                "<!doctype html><html><head><title>Working...</title></head><body>\
                 <form method=\"POST\" name=\"hiddenform\" action=\"{}\">{fields}\
                 <noscript><p>Script is disabled. Click Submit to continue.</p>\
                 <input type=\"submit\" value=\"Submit\"></noscript></form>\
                 <script>document.forms[0].submit();</script></body></html>",
                escape(redirect_uri)
            );
            with_page_headers(Html(body).into_response())
        }
        ResponseMode::Query | ResponseMode::Fragment => {
            let mut url = url::Url::parse(redirect_uri).expect("validated redirect URI");
            if mode == ResponseMode::Fragment {
                url.set_fragment(Some(&encoded));
            } else {
                let merged = match url.query() {
                    Some(q) if !q.is_empty() => format!("{q}&{encoded}"),
                    _ => encoded,
                };
                url.set_query(Some(&merged));
            }
            let mut resp = StatusCode::FOUND.into_response();
            if let Ok(loc) = HeaderValue::from_str(url.as_str()) {
                resp.headers_mut().insert(header::LOCATION, loc);
            }
            with_page_headers(resp)
        }
    }
}

enum Notice {
    Plain(String),
    Entra(EntraError),
}

fn page_error(
    st: &AppState,
    tenant: &str,
    req: &AuthRequest<'_>,
    params: &Params,
    v: Version,
    e: EntraError,
) -> Response {
    count(st, &e);
    page(
        st,
        tenant,
        req,
        params,
        v,
        Some(Notice::Entra(e)),
        StatusCode::BAD_REQUEST,
    )
}

/// The sign-in + consent page. Every echoed value goes through `escape`.
fn page(
    st: &AppState,
    tenant: &str,
    req: &AuthRequest<'_>,
    params: &Params,
    v: Version,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    let path = match v {
        Version::V2 => format!("/{tenant}/oauth2/v2.0/authorize"),
        Version::V1 => format!("/{tenant}/oauth2/authorize"),
    };
    let hidden: String = params
        .0
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "upn" | "mfa" | "consent"))
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                escape(k),
                escape(v)
            )
        })
        .collect();
    let perms = permission_list(&requested_scopes(params, v));
    let notice = match notice {
        None => String::new(),
        Some(Notice::Plain(m)) => format!("<p class=\"error\" role=\"alert\">{}</p>", escape(&m)),
        Some(Notice::Entra(e)) => format!(
            "<p class=\"error\" role=\"alert\" data-aadsts=\"{}\">AADSTS{}: {}</p>",
            e.code,
            e.code,
            escape(&e.message)
        ),
    };
    let upn_value = params
        .get("upn")
        .or_else(|| params.get("login_hint"))
        .unwrap_or("");
    let accounts = account_list(st, req);
    let body = format!(
        "{head}<main>\
         <h1>Sign in</h1>\
         <p><strong>{app}</strong> <span class=\"muted\">(app id {client})</span> wants to:</p>\
         <ul class=\"perms\">{perms}</ul>\
         {notice}\
         <form method=\"post\" action=\"{action}\">{hidden}\
         <label for=\"upn\">Account</label>\
         <input id=\"upn\" name=\"upn\" type=\"text\" value=\"{upn}\" placeholder=\"someone@example.com\" autocomplete=\"username\" required>\
         <label class=\"check\"><input type=\"checkbox\" name=\"mfa\" value=\"on\"> \
         Approve the sign-in request in Microsoft Authenticator (multi-factor authentication)</label>\
         <p class=\"muted\">Accepting grants these permissions to {app} for your organization.</p>\
         <div class=\"buttons\"><button type=\"submit\" name=\"consent\" value=\"deny\">Cancel</button>\
         <button type=\"submit\" name=\"consent\" value=\"accept\" class=\"primary\">Accept</button></div>\
         </form>\
         <details><summary>Accounts in this simulated directory</summary><ul>{accounts}</ul></details>\
         {foot}</main></body></html>",
        head = head("Sign in to your account"),
        app = escape(&req.app.name),
        client = escape(&req.app.client_id),
        action = escape(&path),
        upn = escape(upn_value),
        foot = FOOTER,
    );
    with_page_headers((status, Html(body)).into_response())
}

/// What the app asks for, as the consent page lists it.
fn permission_list(scopes: &Scopes) -> String {
    let mut perms: Vec<String> = Vec::new();
    for (resource, ps) in &scopes.resources {
        for p in ps {
            perms.push(describe(resource, p));
        }
    }
    for s in &scopes.oidc {
        perms.push(
            match s.as_str() {
                "openid" => "Sign you in (openid)",
                "profile" => "View your basic profile (profile)",
                "email" => "View your email address (email)",
                _ => "Maintain access to data you have given it access to (offline_access)",
            }
            .to_string(),
        );
    }
    perms
        .iter()
        .map(|p| format!("<li>{}</li>", escape(p)))
        .collect()
}

/// A few accounts of the simulated directory, as a hint for people trying the demo.
fn account_list(st: &AppState, req: &AuthRequest<'_>) -> String {
    let dir = st.idp.directory();
    dir.users()
        .iter()
        .filter(|u| req.tenant.id().is_none_or(|t| t == u.tenant_id))
        .take(6)
        .map(|u| {
            let t = dir.tenant(&u.tenant_id);
            let mfa = t.map_or("", |t| match t.mfa {
                MfaPolicy::Enforced => "MFA enforced",
                MfaPolicy::Federated => "federated MFA enforced",
                MfaPolicy::NotEnforced => "MFA not enforced",
            });
            format!(
                "<li><code>{}</code> — {}, {} ({})</li>",
                escape(&u.upn),
                escape(&u.role),
                escape(t.map_or("", |t| t.name.as_str())),
                mfa
            )
        })
        .collect()
}

fn describe(resource: &str, perm: &str) -> String {
    let what = match (resource, perm) {
        ("https://api.partnercenter.microsoft.com", "user_impersonation") => {
            "Access Partner Center API as you".to_string()
        }
        ("https://graph.microsoft.com", "Directory.AccessAsUser.All") => {
            "Access the directory as you".to_string()
        }
        ("https://management.azure.com", "user_impersonation") => {
            "Access Azure Resource Manager as you".to_string()
        }
        (_, ".default") => "All permissions the app is configured for".to_string(),
        (_, p) => p.to_string(),
    };
    format!("{what} ({resource}/{perm})")
}

/// The IdP's pages must not be framed or cached (they carry codes and errors).
fn with_page_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    errors::no_store(h);
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>",
        escape(title)
    )
}

const STYLE: &str = "body{font-family:Segoe UI,system-ui,sans-serif;background:#f2f2f2;margin:0}\
main{max-width:440px;margin:40px auto;background:#fff;padding:32px 40px;box-shadow:0 2px 6px rgba(0,0,0,.2)}\
h1{font-size:24px;font-weight:600}label{display:block;margin-top:12px}\
input[type=text]{width:100%;box-sizing:border-box;padding:6px;font-size:15px}\
.check{font-size:14px}.muted{color:#666;font-size:13px}.error{color:#e81123}\
.buttons{text-align:right;margin-top:16px}button{padding:6px 20px;margin-left:8px;font-size:15px}\
.primary{background:#0067b8;color:#fff;border:0}footer{margin-top:24px;color:#666;font-size:12px}";

const FOOTER: &str = "<footer>Simulated Microsoft Entra ID (samvault dev IdP). No real account is involved.</footer>";

/// HTML-escapes text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Entra's logout: back to a loopback `post_logout_redirect_uri`, else a page.
pub async fn logout(RawQuery(q): RawQuery) -> Response {
    let params = query_params(q);
    match params.get("post_logout_redirect_uri") {
        Some(uri) if loopback_redirect(uri) => {
            let mut resp = StatusCode::FOUND.into_response();
            if let Ok(loc) = HeaderValue::from_str(uri) {
                resp.headers_mut().insert(header::LOCATION, loc);
            }
            resp
        }
        _ => Html(format!(
            "{}<main><h1>You signed out of your account</h1><p>It's a good idea to close all browser windows.</p>{FOOTER}</main></body></html>",
            head("Sign out")
        ))
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn loopback_only() {
        assert!(loopback_redirect("http://127.0.0.1:8080/onboard/callback"));
        assert!(loopback_redirect("http://localhost/cb"));
        assert!(!loopback_redirect("https://evil.example/cb"));
        assert!(!loopback_redirect("http://127.0.0.1.evil.example/cb"));
        assert!(!loopback_redirect("javascript:alert(1)"));
    }
}
