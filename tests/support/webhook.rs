//! A webhook receiver for end-to-end tests: collects the events `samvault serve` delivers,
//! checking each signature with the shared secret. Used by tests/rotation.rs and tests/e2e.rs.

use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::stack::StackOptions;

pub const WEBHOOK_SECRET: &str = "whsec-test-0123456789";

/// Collects webhook deliveries, checking each signature with the shared secret.
#[derive(Clone, Default)]
pub struct Receiver {
    events: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    pub async fn start() -> (Receiver, String) {
        use axum::http::HeaderMap;
        let receiver = Receiver::default();
        let events = receiver.events.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let events = events.clone();
                async move {
                    let signature = headers["x-samvault-signature"]
                        .to_str()
                        .unwrap()
                        .to_string();
                    let expected = samvault::notify::signature(WEBHOOK_SECRET.as_bytes(), &body);
                    assert_eq!(signature, expected, "webhook signature");
                    let event: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(
                        headers["x-samvault-event"].to_str().unwrap(),
                        event["kind"].as_str().unwrap()
                    );
                    events.lock().unwrap().push(event);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, url)
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    pub fn of_kind(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }
}

pub fn with_webhook(options: StackOptions, url: &str) -> StackOptions {
    options
        .env("SAMVAULT_WEBHOOK_URL", url)
        .env("SAMVAULT_WEBHOOK_SECRET", WEBHOOK_SECRET)
}
