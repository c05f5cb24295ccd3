//! OIDC discovery documents and the JWKS, shaped like Entra's.
//!
//! For `common`/`organizations` the issuer keeps Entra's literal `{tenantid}`
//! placeholder: clients must substitute the token's `tid`, as they must in production.
//! Like Entra's, the v2 document does not advertise `code_challenge_methods_supported`
//! although PKCE is supported.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::errors::{RequestIds, known_meaning};
use super::{AppState, PathTenant};

fn tenant_or_error(
    st: &AppState,
    raw: &str,
    headers: &HeaderMap,
) -> Result<(String, String), Response> {
    match st.idp.path_tenant(raw) {
        Ok(PathTenant::Any(label)) => Ok((label.to_string(), "{tenantid}".to_string())),
        Ok(tenant) => {
            let id = tenant.id().unwrap_or_default().to_string();
            Ok((id.clone(), id))
        }
        Err(e) => Err(e.with_error("invalid_tenant").to_response(
            &st.base,
            &RequestIds::new(headers),
            st.idp.now(),
        )),
    }
}

pub async fn openid_configuration_v2(
    State(st): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (seg, tid) = match tenant_or_error(&st, &tenant, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let base = &st.base;
    Json(json!({
        "token_endpoint": format!("{base}/{seg}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/{seg}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/{tid}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": format!("{base}/{seg}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/{seg}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{base}/{seg}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
            "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr",
            "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": format!("{base}/{seg}/kerberos"),
        "tenant_region_scope": if tid == "{tenantid}" { serde_json::Value::Null } else { json!("NA") },
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net"
    }))
    .into_response()
}

pub async fn openid_configuration_v1(
    State(st): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (seg, tid) = match tenant_or_error(&st, &tenant, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let base = &st.base;
    Json(json!({
        "token_endpoint": format!("{base}/{seg}/oauth2/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        // Entra's v1 documents point every tenant at the common keys.
        "jwks_uri": format!("{base}/common/discovery/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
        "scopes_supported": ["openid"],
        "issuer": format!("{base}/{tid}/"),
        "microsoft_multi_refresh_token": true,
        "authorization_endpoint": format!("{base}/{seg}/oauth2/authorize"),
        "end_session_endpoint": format!("{base}/{seg}/oauth2/logout"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net"
    }))
    .into_response()
}

pub async fn keys_v2(
    State(st): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    match tenant_or_error(&st, &tenant, &headers) {
        Ok((_, tid)) => {
            let issuer = format!("{}/{tid}/v2.0", st.base);
            Json(st.idp.key_ring().jwks(Some(&issuer))).into_response()
        }
        Err(r) => r,
    }
}

pub async fn keys_v1(
    State(st): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    match tenant_or_error(&st, &tenant, &headers) {
        // v1 keys carry no issuer in Entra's document.
        Ok(_) => Json(st.idp.key_ring().jwks(None)).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
pub struct ErrorQuery {
    code: Option<String>,
}

/// `error_uri` target, like `login.microsoftonline.com/error?code=`.
pub async fn error_page(Query(q): Query<ErrorQuery>) -> Html<String> {
    let code = q.code.unwrap_or_default();
    let meaning = code
        .trim_start_matches("AADSTS")
        .parse::<u32>()
        .ok()
        .and_then(known_meaning)
        .unwrap_or("No description is available for this code in the dev IdP.");
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>AADSTS{c}</title></head>\
         <body><h1>Error code AADSTS{c}</h1><p>{m}</p><p>Simulated Microsoft Entra ID (samvault dev IdP).</p></body></html>",
        c = super::authorize::escape(code.trim_start_matches("AADSTS")),
        m = super::authorize::escape(meaning),
    ))
}
