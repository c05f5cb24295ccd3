//! The partner list: search, status filter, sort orders, keyset cursors.

use super::*;

#[derive(Deserialize, Default)]
struct ListParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    cursor: String,
}

/// The list's parameters, parsed.
#[derive(Debug, PartialEq)]
struct ListRequest {
    search: Option<String>,
    status: Option<PartnerStatus>,
    sort: PartnerSort,
    after: Option<Position>,
}

impl ListRequest {
    fn parse(raw: Option<&str>) -> Result<Self, &'static str> {
        let params: ListParams = serde_urlencoded::from_str(raw.unwrap_or(""))
            .map_err(|_| "The address has parameters this page does not understand.")?;
        let search = params.q.trim();
        if search.chars().count() > MAX_SEARCH_CHARS {
            return Err("The search term is too long: at most 100 characters.");
        }
        if search.chars().any(char::is_control) {
            return Err("The search term contains control characters.");
        }
        let status = match params.status.as_str() {
            "" | "all" => None,
            other => Some(
                PartnerStatus::parse(other)
                    .ok_or("Unknown status: use active, at_risk, reconsent_required or revoked.")?,
            ),
        };
        let sort = match params.sort.as_str() {
            "" => PartnerSort::Name,
            other => PartnerSort::parse(other)
                .ok_or("Unknown sort order: use name, expiry, status or last_refresh.")?,
        };
        let after = match params.cursor.as_str() {
            "" => None,
            cursor => Some(
                decode_cursor(sort, cursor)
                    .ok_or("This page link is damaged or belongs to another sort order.")?,
            ),
        };
        Ok(ListRequest {
            search: (!search.is_empty()).then(|| search.to_string()),
            status,
            sort,
            after,
        })
    }

    /// The list's address with these filters and `cursor` (omitting empty parameters).
    fn href(&self, cursor: Option<&str>) -> String {
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if let Some(q) = &self.search {
            pairs.push(("q", q));
        }
        if let Some(status) = self.status {
            pairs.push(("status", status.as_str()));
        }
        if self.sort != PartnerSort::Name {
            pairs.push(("sort", self.sort.as_str()));
        }
        if let Some(cursor) = cursor {
            pairs.push(("cursor", cursor));
        }
        match serde_urlencoded::to_string(&pairs) {
            Ok(query) if !query.is_empty() => format!("/ops/partners?{query}"),
            _ => "/ops/partners".to_string(),
        }
    }
}

/// A cursor for the "Next" link: the last row's sort key as a compact JSON array, base64url.
/// It holds nothing the page does not show already (a name, a time, a tenant id).
fn encode_cursor(position: &Position) -> String {
    let wire = match position {
        Position::Name { name, tenant } => serde_json::json!(["n", name, tenant.as_str()]),
        Position::Refresh { at, tenant } => serde_json::json!(["r", at, tenant.as_str()]),
        Position::Status {
            status,
            name,
            tenant,
        } => serde_json::json!(["s", status.as_str(), name, tenant.as_str()]),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(wire.to_string())
}

/// Reads a cursor back; `None` unless it is well-formed and belongs to `sort`.
fn decode_cursor(sort: PartnerSort, cursor: &str) -> Option<Position> {
    use serde_json::Value;
    if cursor.len() > MAX_CURSOR_CHARS {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let Value::Array(items) = serde_json::from_slice::<Value>(&bytes).ok()? else {
        return None;
    };
    let text = |v: &Value| v.as_str().map(str::to_string);
    let tenant = |v: &Value| TenantId::parse(v.as_str()?).ok();
    match (sort, items.as_slice()) {
        (PartnerSort::Name, [Value::String(k), name, t]) if k == "n" => Some(Position::Name {
            name: text(name)?,
            tenant: tenant(t)?,
        }),
        (PartnerSort::Expiry | PartnerSort::LastRefresh, [Value::String(k), at, t]) if k == "r" => {
            Some(Position::Refresh {
                at: at.as_i64()?,
                tenant: tenant(t)?,
            })
        }
        (PartnerSort::Status, [Value::String(k), status, name, t]) if k == "s" => {
            Some(Position::Status {
                status: PartnerStatus::parse(status.as_str()?)?,
                name: text(name)?,
                tenant: tenant(t)?,
            })
        }
        _ => None,
    }
}

/// A partner as a row of the list.
struct PartnerRow {
    tenant_id: String,
    name: String,
    domain: String,
    status: &'static str,
    expiry: Expiry,
    last_refresh: String,
    next_rotation: String,
    mfa: bool,
}

impl PartnerRow {
    fn new(listed: &ListedPartner, warn_secs: i64, at: i64) -> Self {
        let p = &listed.partner;
        PartnerRow {
            tenant_id: p.tenant_id.to_string(),
            name: p.display_name.clone(),
            domain: p.domain.clone().unwrap_or_default(),
            status: p.status.as_str(),
            expiry: Expiry::of(p, warn_secs, at),
            last_refresh: when(Some(p.last_refresh_at)),
            next_rotation: next_rotation(listed),
            mfa: p.mfa,
        }
    }
}

/// An `<option>` of a filter.
struct Choice {
    value: &'static str,
    label: &'static str,
    selected: bool,
}

impl Choice {
    fn list(options: &[(&'static str, &'static str)], current: &str) -> Vec<Choice> {
        options
            .iter()
            .map(|&(value, label)| Choice {
                value,
                label,
                selected: value == current,
            })
            .collect()
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "ops/partners.html")]
pub(super) struct ListPage {
    chrome: Chrome,
    q: String,
    statuses: Vec<Choice>,
    sorts: Vec<Choice>,
    rows: Vec<PartnerRow>,
    first_page: Option<String>,
    next_page: Option<String>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    signed_in: SignedIn<Viewer>,
) -> PageResult<ListPage> {
    let request = ListRequest::parse(raw.as_deref()).map_err(bad_request)?;
    let query = PartnerQuery {
        search: request.search.clone(),
        status: request.status,
        sort: request.sort,
        after: request.after.clone(),
        limit: PAGE_SIZE as i64 + 1,
    };
    let mut found = partners::list_page(&state.db, &query)
        .await
        .map_err(unavailable)?;
    let next_page = (found.len() > PAGE_SIZE).then(|| {
        found.truncate(PAGE_SIZE);
        let last = &found[PAGE_SIZE - 1].partner;
        request.href(Some(&encode_cursor(&request.sort.position_of(last))))
    });
    let warn = state.broker.settings().expiry_warn.as_secs() as i64;
    let at = now();
    Ok(ListPage {
        chrome: signed_in.chrome(Section::Partners),
        q: request.search.clone().unwrap_or_default(),
        statuses: Choice::list(
            &[
                ("all", "All statuses"),
                ("active", "active"),
                ("at_risk", "at_risk"),
                ("reconsent_required", "reconsent_required"),
                ("revoked", "revoked"),
            ],
            request.status.map_or("all", PartnerStatus::as_str),
        ),
        sorts: Choice::list(
            &[
                ("name", "Name"),
                ("expiry", "Days until expiry (soonest first)"),
                ("status", "Status"),
                ("last_refresh", "Last refresh (newest first)"),
            ],
            request.sort.as_str(),
        ),
        rows: found
            .iter()
            .map(|listed| PartnerRow::new(listed, warn, at))
            .collect(),
        first_page: request.after.is_some().then(|| request.href(None)),
        next_page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(n: u32) -> TenantId {
        TenantId::parse(&format!("00000000-0000-4000-8000-{n:012}")).unwrap()
    }

    #[test]
    fn cursors_round_trip_in_their_sort_order() {
        let cases = [
            (
                PartnerSort::Name,
                Position::Name {
                    name: "Contoso \"Ltd\" <b>ü</b>\n".into(),
                    tenant: tenant(1),
                },
            ),
            (
                PartnerSort::Expiry,
                Position::Refresh {
                    at: 1_790_000_000,
                    tenant: tenant(2),
                },
            ),
            (
                PartnerSort::LastRefresh,
                Position::Refresh {
                    at: -5,
                    tenant: tenant(3),
                },
            ),
            (
                PartnerSort::Status,
                Position::Status {
                    status: PartnerStatus::AtRisk,
                    name: String::new(),
                    tenant: tenant(4),
                },
            ),
        ];
        for (sort, position) in cases {
            let cursor = encode_cursor(&position);
            assert!(
                cursor
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "URL-safe: {cursor}"
            );
            assert_eq!(decode_cursor(sort, &cursor), Some(position));
        }
    }

    #[test]
    fn cursors_are_refused_when_damaged_or_from_another_order() {
        let name = encode_cursor(&Position::Name {
            name: "Contoso".into(),
            tenant: tenant(1),
        });
        assert_eq!(decode_cursor(PartnerSort::Expiry, &name), None);
        assert_eq!(decode_cursor(PartnerSort::Status, &name), None);
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        for bad in [
            "".to_string(),
            "!!!".to_string(),
            name[..name.len() - 3].to_string(),
            b64("{}"),
            b64("[\"n\", \"Contoso\"]"),
            b64("[\"n\", \"Contoso\", \"not-a-guid\"]"),
            b64("[\"n\", 5, \"00000000-0000-4000-8000-000000000001\"]"),
            b64("[\"r\", \"soon\", \"00000000-0000-4000-8000-000000000001\"]"),
            b64("[\"s\", \"sleeping\", \"x\", \"00000000-0000-4000-8000-000000000001\"]"),
            "A".repeat(MAX_CURSOR_CHARS + 1),
        ] {
            for sort in [
                PartnerSort::Name,
                PartnerSort::Expiry,
                PartnerSort::Status,
                PartnerSort::LastRefresh,
            ] {
                assert_eq!(decode_cursor(sort, &bad), None, "{bad}");
            }
        }
    }

    #[test]
    fn list_parameters_are_parsed_or_refused() {
        let parsed = ListRequest::parse(Some("q=+Contoso+&status=at_risk&sort=expiry")).unwrap();
        assert_eq!(parsed.search.as_deref(), Some("Contoso"));
        assert_eq!(parsed.status, Some(PartnerStatus::AtRisk));
        assert_eq!(parsed.sort, PartnerSort::Expiry);
        assert_eq!(
            parsed.href(Some("abc")),
            "/ops/partners?q=Contoso&status=at_risk&sort=expiry&cursor=abc"
        );
        let empty = ListRequest::parse(Some("q=&status=all&sort=&cursor=")).unwrap();
        assert_eq!(empty, ListRequest::parse(None).unwrap());
        assert_eq!(empty.href(None), "/ops/partners");
        let long = format!("q={}", "x".repeat(MAX_SEARCH_CHARS + 1));
        for bad in [
            "status=sleeping",
            "sort=random",
            "cursor=%%%",
            "cursor=abc",
            "q=a%00b",
            long.as_str(),
        ] {
            assert!(ListRequest::parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
