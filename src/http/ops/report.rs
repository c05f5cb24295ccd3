//! `/ops/security`: the security report, modelled on Partner Center's "security requirements
//! status". Over the last 7 days it shows the share of App+User token requests whose token
//! carried MFA (`amr` contains `mfa`), per client and overall, with a verdict and what to do;
//! the consents behind the grants with and without MFA; and two downloads: the per-client
//! summary and the latest 10,000 requests (both CSV).
//!
//! Every token samvault issues is App+User (redeemed from a partner's refresh token), so no
//! app-only requests need leaving out. The share's denominator is the tokens issued: a refused
//! request carried no token; it is listed in the requests file with its problem code.

mod csv;

use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use self::csv::CsvWriter;
use super::{Chrome, PageResult, Section, SignedIn, Viewer, unavailable, when};
use crate::http::AppState;
use crate::storage::requests::{self, ConsentMfa, RECENT, RequestCounts, RequestRecord};
use crate::storage::{clients, now, rfc3339};

/// The report's window, as in Partner Center.
const WINDOW_SECS: i64 = 7 * 86_400;
/// Partners without MFA listed on the page (all are counted).
const PARTNERS_LISTED: i64 = 500;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ops/security", get(report))
        .route("/ops/security/clients.csv", get(clients_csv))
        .route("/ops/security/requests.csv", get(requests_csv))
}

/// The last 7 days, from the top of the hour: the counts are kept per hour.
struct Window {
    start: i64,
    end: i64,
}

impl Window {
    fn ending(end: i64) -> Self {
        let since = end - WINDOW_SECS;
        Window {
            start: since - since.rem_euclid(3600),
            end,
        }
    }
}

/// Partner Center's target is 100 %: every App+User request made with an MFA token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    // Declared in the order the report lists clients: the ones needing work first.
    BelowTarget,
    NoTokens,
    Meets,
}

impl Verdict {
    fn of(counts: &RequestCounts) -> Self {
        if counts.issued == 0 {
            Verdict::NoTokens
        } else if counts.issued_mfa == counts.issued {
            Verdict::Meets
        } else {
            Verdict::BelowTarget
        }
    }

    /// Stable word for the CSV.
    fn code(self) -> &'static str {
        match self {
            Verdict::Meets => "meets",
            Verdict::BelowTarget => "below_target",
            Verdict::NoTokens => "no_tokens",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Meets => "Meets the requirement",
            Verdict::BelowTarget => "Below target",
            Verdict::NoTokens => "No tokens issued",
        }
    }

    /// The badge class (static/samvault.css).
    fn badge(self) -> &'static str {
        match self {
            Verdict::Meets => "ok",
            Verdict::BelowTarget => "bad",
            Verdict::NoTokens => "",
        }
    }

    fn advice(self) -> &'static str {
        match self {
            Verdict::Meets => "Every token issued carried MFA. Nothing to do.",
            Verdict::BelowTarget => {
                "Some tokens lacked MFA, and Partner Center refuses those (401 \"MFA required\"). \
                 Find their partners in the requests file (mfa = no) or in the consents below, \
                 and ask each partner's admin to consent again with MFA."
            }
            Verdict::NoTokens => {
                "Every request was refused, so there is no share to measure. The problem codes \
                 are in the requests file."
            }
        }
    }
}

/// The share of issued tokens that carried MFA, as shown: rounded down to a tenth, so only a
/// client with every token under MFA shows 100. `None` when no token was issued.
fn mfa_share(counts: &RequestCounts) -> Option<String> {
    if counts.issued <= 0 {
        return None;
    }
    let tenths = counts.issued_mfa.clamp(0, counts.issued) * 1000 / counts.issued;
    Some(if tenths % 10 == 0 {
        format!("{}", tenths / 10)
    } else {
        format!("{}.{}", tenths / 10, tenths % 10)
    })
}

struct ClientRow {
    client_id: String,
    /// `None` for a client id the clients table does not know (cannot happen today:
    /// clients are revoked, never deleted).
    name: Option<String>,
    counts: RequestCounts,
    share: Option<String>,
    verdict: Verdict,
}

struct Summary {
    window: Window,
    clients: Vec<ClientRow>,
    overall: RequestCounts,
}

async fn summary(state: &AppState) -> PageResult<Summary> {
    let window = Window::ending(now());
    let counts = requests::counts_by_client(&state.db, window.start)
        .await
        .map_err(unavailable)?;
    let names: std::collections::HashMap<String, String> = clients::list(&state.db)
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|c| (c.client_id, c.name))
        .collect();
    let mut overall = RequestCounts::default();
    let mut clients: Vec<ClientRow> = counts
        .into_iter()
        .map(|(client_id, counts)| {
            overall.requests += counts.requests;
            overall.issued += counts.issued;
            overall.issued_mfa += counts.issued_mfa;
            overall.cached += counts.cached;
            ClientRow {
                name: names.get(&client_id).cloned(),
                client_id,
                share: mfa_share(&counts),
                verdict: Verdict::of(&counts),
                counts,
            }
        })
        .collect();
    clients.sort_by(|a, b| {
        (a.verdict, -a.counts.requests, &a.client_id).cmp(&(
            b.verdict,
            -b.counts.requests,
            &b.client_id,
        ))
    });
    Ok(Summary {
        window,
        clients,
        overall,
    })
}

/// A partner without MFA, as the page shows it.
struct PartnerRow {
    tenant_id: String,
    display_name: String,
    status: String,
    consented_by: String,
    consented_at: String,
    amr: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "ops/security.html")]
pub(super) struct SecurityPage {
    chrome: Chrome,
    window_start: String,
    window_end: String,
    clients: Vec<ClientRow>,
    overall: RequestCounts,
    overall_share: Option<String>,
    overall_verdict: Verdict,
    with_mfa: i64,
    without_mfa: i64,
    partners_without_mfa: Vec<PartnerRow>,
    /// More partners lack MFA than the page lists.
    partners_truncated: bool,
}

async fn report(
    State(state): State<AppState>,
    signed_in: SignedIn<Viewer>,
) -> PageResult<SecurityPage> {
    let summary = summary(&state).await?;
    let ConsentMfa {
        with_mfa,
        without_mfa,
        partners_without_mfa,
    } = requests::consent_mfa(&state.db, PARTNERS_LISTED)
        .await
        .map_err(unavailable)?;
    Ok(SecurityPage {
        chrome: signed_in.chrome(Section::Security),
        partners_truncated: (partners_without_mfa.len() as i64) < without_mfa,
        window_start: when(Some(summary.window.start)),
        window_end: when(Some(summary.window.end)),
        overall_share: mfa_share(&summary.overall),
        overall_verdict: Verdict::of(&summary.overall),
        overall: summary.overall,
        clients: summary.clients,
        with_mfa,
        without_mfa,
        partners_without_mfa: partners_without_mfa
            .into_iter()
            .map(|p| PartnerRow {
                tenant_id: p.tenant_id,
                display_name: p.display_name,
                status: p.status,
                consented_by: p.consented_by,
                consented_at: when(Some(p.consented_at)),
                amr: p.amr.unwrap_or_default(),
            })
            .collect(),
    })
}

/// A CSV download: `name-YYYY-MM-DD.csv`, never cached (the service's default).
fn csv_response(name: &str, body: String) -> Response {
    let date = rfc3339(now()).get(..10).unwrap_or("").to_string();
    let disposition = format!("attachment; filename=\"samvault-{name}-{date}.csv\"");
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition)
                    .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
            ),
        ],
        body,
    )
        .into_response()
}

/// Partner Center's "API requests summary": one row per client over the window.
async fn clients_csv(State(state): State<AppState>, _: SignedIn<Viewer>) -> PageResult {
    let summary = summary(&state).await?;
    let (start, end) = (rfc3339(summary.window.start), rfc3339(summary.window.end));
    let mut csv = CsvWriter::new();
    csv.row([
        "client_id",
        "client_name",
        "requests",
        "issued",
        "issued_mfa",
        "cached",
        "mfa_share_percent",
        "verdict",
        "window_start",
        "window_end",
    ]);
    for c in &summary.clients {
        csv.row([
            c.client_id.as_str(),
            c.name.as_deref().unwrap_or(""),
            &c.counts.requests.to_string(),
            &c.counts.issued.to_string(),
            &c.counts.issued_mfa.to_string(),
            &c.counts.cached.to_string(),
            c.share.as_deref().unwrap_or(""),
            c.verdict.code(),
            &start,
            &end,
        ]);
    }
    Ok(csv_response("security-clients", csv.finish()))
}

fn yes_no(flag: bool) -> &'static str {
    if flag { "yes" } else { "no" }
}

/// Partner Center's "all API requests": the latest 10,000 token requests, newest first.
async fn requests_csv(State(state): State<AppState>, _: SignedIn<Viewer>) -> PageResult {
    let rows = requests::latest(&state.db, RECENT)
        .await
        .map_err(unavailable)?;
    let mut csv = CsvWriter::new();
    csv.row([
        "time",
        "client_id",
        "tenant_id",
        "resource",
        "purpose",
        "outcome",
        "cached",
        "mfa",
        // Last, so that files read by column position keep their meaning.
        "customer_tenant_id",
    ]);
    for RequestRecord {
        at,
        client_id,
        tenant_id,
        customer_tenant_id,
        resource,
        purpose,
        outcome,
        cached,
        mfa,
    } in &rows
    {
        csv.row([
            rfc3339(*at).as_str(),
            client_id,
            tenant_id,
            resource,
            purpose,
            outcome,
            yes_no(*cached),
            mfa.map(yes_no).unwrap_or(""),
            customer_tenant_id.as_deref().unwrap_or(""),
        ]);
    }
    Ok(csv_response("security-requests", csv.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(issued: i64, issued_mfa: i64) -> RequestCounts {
        RequestCounts {
            requests: issued + 1,
            issued,
            issued_mfa,
            cached: 0,
        }
    }

    #[test]
    fn only_every_token_under_mfa_shows_100() {
        assert_eq!(mfa_share(&counts(4, 4)).as_deref(), Some("100"));
        assert_eq!(mfa_share(&counts(10_000, 9_999)).as_deref(), Some("99.9"));
        assert_eq!(mfa_share(&counts(5, 2)).as_deref(), Some("40"));
        assert_eq!(mfa_share(&counts(3, 1)).as_deref(), Some("33.3"));
        assert_eq!(mfa_share(&counts(0, 0)), None);
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::of(&counts(4, 4)), Verdict::Meets);
        assert_eq!(Verdict::of(&counts(4, 3)), Verdict::BelowTarget);
        assert_eq!(Verdict::of(&counts(0, 0)), Verdict::NoTokens);
    }

    #[test]
    fn the_window_is_seven_days_from_the_top_of_an_hour() {
        let end = 1_800_000_000 + 1234;
        let window = Window::ending(end);
        assert_eq!(window.start % 3600, 0);
        assert!(end - window.start >= WINDOW_SECS && end - window.start < WINDOW_SECS + 3600);
    }
}
