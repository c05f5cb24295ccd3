//! The address a request comes from, for per-address limits ([`ClientAddress`]).
//!
//! By default it is the socket peer: a header anyone can write is not believed. Behind a
//! reverse proxy every peer is the proxy, and one client's failures would throttle everyone,
//! so the proxies are named in `SAMVAULT_TRUSTED_PROXIES`: a request whose peer is one of them
//! is attributed to the rightmost `X-Forwarded-For` address that is not (what the nearest
//! proxy saw), never to an address further left, which the client itself may have written.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

use super::AppState;

/// The client's address. Without a socket peer (a router driven in-process) it is 0.0.0.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip());
        Ok(ClientAddress(client_address(
            peer,
            &parts.headers,
            &state.config.server.trusted_proxies,
        )))
    }
}

/// The client behind `peer`: `peer` itself unless it is a trusted proxy, else the rightmost
/// `X-Forwarded-For` entry that is not a trusted proxy (or the leftmost readable one when all
/// are). An unreadable entry ends the walk: what lies left of it is the client's own writing.
pub fn client_address(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let Some(mut client) = peer else {
        return IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    };
    let is_trusted = |address: &IpAddr| trusted.iter().any(|net| net.contains(address));
    // Entries in the order proxies appended them, across repeated headers; read as bytes so
    // one non-ASCII entry cannot hide the ones our proxy appended after it.
    let hops: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .collect();
    for hop in hops.iter().rev() {
        if !is_trusted(&client) {
            break;
        }
        match parse_hop(hop) {
            Some(address) => client = address,
            None => break,
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, or an address with a port (as some load
/// balancers write it: `203.0.113.7:51234`, `[2001:db8::1]:443`).
fn parse_hop(hop: &[u8]) -> Option<IpAddr> {
    let hop = std::str::from_utf8(hop).ok()?.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                "x-forwarded-for",
                axum::http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() {
        let headers = forwarded(&[b"203.0.113.9"]);
        assert_eq!(
            client_address(Some(ip("192.0.2.1")), &headers, &[]),
            ip("192.0.2.1")
        );
        assert_eq!(client_address(None, &headers, &[]), ip("0.0.0.0"));
        let proxies = ["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_address(Some(ip("192.0.2.1")), &headers, &proxies),
            ip("192.0.2.1"),
            "a peer that is no proxy of ours cannot choose its address"
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_entry_is_the_client() {
        let proxies = [
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::1/128".parse().unwrap(),
        ];
        let peer = Some(ip("10.1.2.3"));
        let cases: [(&[&[u8]], &str); 8] = [
            // The client wrote a fake entry; our two proxies appended the real one and theirs.
            (&[b"198.51.100.66, 203.0.113.7, 10.0.0.2"], "203.0.113.7"),
            (&[b"198.51.100.66", b"203.0.113.7:51234"], "203.0.113.7"),
            (&[b"[2001:db8::7]:443"], "2001:db8::7"),
            (&[b"\xff\xfe garbage, 203.0.113.7"], "203.0.113.7"),
            (&[b"not an address, 10.0.0.9"], "10.0.0.9"),
            (&[b"10.0.0.5, 10.0.0.6"], "10.0.0.5"),
            (&[b""], "10.1.2.3"),
            (&[], "10.1.2.3"),
        ];
        for (values, client) in cases {
            assert_eq!(
                client_address(peer, &forwarded(values), &proxies),
                ip(client),
                "{values:?}"
            );
        }
    }
}
