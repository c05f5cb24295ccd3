//! Request ids and spans: every request gets an id, the caller's `x-request-id` when it is
//! short visible ASCII, else a fresh one; the id is answered in `x-request-id`, written in
//! every problem body and carried by the request's span, so a caller quoting it leads to the
//! request's log lines. The span names the method and the route template only: never a path
//! (it may hold an invitation token), a header (`Authorization` holds a client secret), a
//! query or a body.

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::response::Response;
use tower::ServiceBuilder;
use tower::util::{MapRequestLayer, MapResponseLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use super::problem::Problem;

/// Longest request id taken from a caller.
pub const MAX_LEN: usize = 64;

/// Whether a caller's id may be used as it is: it lands in log lines and problem bodies.
pub fn acceptable(id: &HeaderValue) -> bool {
    (1..=MAX_LEN).contains(&id.len()) && id.as_bytes().iter().all(u8::is_ascii_graphic)
}

/// Ids made here: random UUIDs, from the thread's RNG (no system call per request).
#[derive(Clone, Copy)]
struct RandomId;

impl MakeRequestId for RandomId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let text = id
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .to_owned();
        HeaderValue::try_from(text).ok().map(RequestId::new)
    }
}

/// A caller's id that is not [`acceptable`] is dropped, so that one is made instead.
fn drop_unacceptable_id(mut request: Request) -> Request {
    if let Some(id) = request.headers().get(X_REQUEST_ID)
        && !acceptable(id)
    {
        request.headers_mut().remove(X_REQUEST_ID);
    }
    request
}

const X_REQUEST_ID: &str = "x-request-id";

/// The route, not the path: a path can carry a secret (`/onboard/i/{invitation}` holds an
/// invitation token), a route template cannot. Unrouted requests name none. Fields are
/// written with `Display`: the id is visible ASCII and a template is ours, so `Debug`'s
/// quoting pass would be work for nothing on every request.
fn request_span(request: &Request) -> tracing::Span {
    let id = request
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    tracing::info_span!(
        "request",
        id = %id,
        method = %request.method(),
        route = route.map(tracing::field::display),
    )
}

/// Wraps `router` in the id and span layers, outermost first: drop a bad id, set one, open
/// the span, write the id in problem bodies, answer it in `x-request-id`. One typed stack of plain
/// tower layers: no boxed future, one box per request.
pub fn layer(router: Router) -> Router {
    // 5xx answers are logged where they arise; this line adds the request's latency.
    let on_failure = DefaultOnFailure::new().level(tracing::Level::WARN);
    router.layer(
        ServiceBuilder::new()
            .layer(MapRequestLayer::new(drop_unacceptable_id))
            .layer(SetRequestIdLayer::x_request_id(RandomId))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_failure(on_failure),
            )
            .layer(MapResponseLayer::new(name_request_in_problem))
            .layer(PropagateRequestIdLayer::x_request_id()),
    )
}

/// A problem answer names the request it answers, as its `x-request-id` header does.
fn name_request_in_problem(mut response: Response) -> Response {
    let id = response.headers().get(X_REQUEST_ID).cloned();
    if let Some(id) = id.as_ref().and_then(|id| id.to_str().ok()) {
        Problem::name_request(&mut response, id);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_visible_ascii_ids_are_taken() {
        let ok = |text: &[u8]| acceptable(&HeaderValue::from_bytes(text).unwrap());
        assert!(ok(b"5f0c7a0e-1b2c-4d3e-8f40-123456789abc"));
        assert!(ok(b"Root=1-5759e988;Parent=53995c3f/x+y"));
        assert!(ok(&[b'a'; MAX_LEN]));
        assert!(!ok(&[b'a'; MAX_LEN + 1]));
        assert!(!ok(b""));
        assert!(!ok(b"two words"));
        assert!(!ok(b"tab\there"));
        assert!(!ok("café".as_bytes()));
    }

    #[test]
    fn made_ids_are_acceptable_and_differ() {
        let request = axum::http::Request::new(());
        let mut make = RandomId;
        let a = make.make_request_id(&request).unwrap();
        let b = make.make_request_id(&request).unwrap();
        assert!(acceptable(a.header_value()), "{a:?}");
        assert_ne!(a.header_value(), b.header_value());
    }
}
