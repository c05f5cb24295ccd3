//! The HTTP client under the Azure SDK: our reqwest 0.13 (rustls), plugged in through
//! azure_core's `HttpClient` trait, so the SDK's default reqwest 0.12 is never built.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use azure_core::error::{Error, ErrorKind};
use azure_core::http::headers::Headers;
use azure_core::http::{AsyncRawResponse, Body, HttpClient, Request, Transport};

use crate::vault::VaultError;

/// Key Vault answers in milliseconds; a connection that takes longer is a vault in trouble.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Debug)]
struct Reqwest(reqwest::Client);

/// The transport for the Key Vault client and its credential. `extra_ca_file` (PEM) is trusted
/// in addition to the system's roots: a TLS-inspecting proxy's CA, or a test double's.
pub fn transport(extra_ca_file: Option<&Path>) -> Result<Transport, VaultError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = extra_ca_file {
        let roots = crate::config::extra_roots(path).map_err(|e| VaultError::Config(e.0))?;
        builder = builder.tls_certs_merge(roots);
    }
    let client = builder
        .build()
        .map_err(|e| VaultError::Config(format!("cannot build the Key Vault HTTP client: {e}")))?;
    Ok(Transport::new(Arc::new(Reqwest(client))))
}

#[async_trait::async_trait]
impl HttpClient for Reqwest {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let method = reqwest::Method::from_bytes(request.method().as_ref().as_bytes())
            .map_err(|e| Error::with_error(ErrorKind::Other, e, "unsupported HTTP method"))?;
        let mut outgoing = self.0.request(method, request.url().clone());
        for (name, value) in request.headers().iter() {
            outgoing = outgoing.header(name.as_str(), value.as_str());
        }
        match request.body() {
            Body::Bytes(bytes) => outgoing = outgoing.body(bytes.clone()),
            // Key Vault operations are small JSON bodies; the SDK streams only uploads.
            Body::SeekableStream(_) => {
                return Err(Error::with_message(
                    ErrorKind::Other,
                    "streaming request bodies are not supported",
                ));
            }
        }
        let failed = |e: reqwest::Error| {
            let kind = if e.is_connect() {
                ErrorKind::Connection
            } else {
                ErrorKind::Io
            };
            Error::with_error(kind, e, "Key Vault request failed")
        };
        let response = outgoing.send().await.map_err(failed)?;
        let status = response.status().as_u16();
        let mut headers = Headers::new();
        for (name, value) in response.headers() {
            if let Ok(value) = value.to_str() {
                headers.insert(name.as_str().to_owned(), value.to_owned());
            }
        }
        let body = response.bytes().await.map_err(failed)?;
        Ok(AsyncRawResponse::from_bytes(status.into(), headers, body))
    }
}
