//! Time-based one-time passwords (RFC 6238 over RFC 4226 HOTP): HMAC-SHA1, 30-second steps,
//! six digits — what every authenticator app reads from an `otpauth://` URI.

use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

pub const STEP_SECS: i64 = 30;
const DIGITS: u32 = 6;
/// 160 bits, the size RFC 4226 recommends for the shared secret.
pub const SECRET_LEN: usize = 20;

/// A fresh random secret.
pub fn generate_secret() -> zeroize::Zeroizing<Vec<u8>> {
    use rand::RngCore;
    let mut secret = zeroize::Zeroizing::new(vec![0u8; SECRET_LEN]);
    rand::rng().fill_bytes(&mut secret);
    secret
}

/// The time step a Unix time falls in.
pub fn step(unix: i64) -> i64 {
    unix.div_euclid(STEP_SECS)
}

/// The code of one time step (RFC 4226 §5.3 dynamic truncation).
pub fn code(secret: &[u8], step: i64) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(&step.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let binary = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    format!(
        "{:0width$}",
        binary % 10u32.pow(DIGITS),
        width = DIGITS as usize
    )
}

/// The step whose code `presented` is, among the current step and one either side (clock
/// drift), provided it is later than `last_used` — so each code is accepted once.
pub fn verify(secret: &[u8], presented: &str, now: i64, last_used: Option<i64>) -> Option<i64> {
    let presented = presented.trim();
    if presented.len() != DIGITS as usize || !presented.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = step(now);
    // Check every candidate (no early exit) so timing does not tell which step matched.
    let mut matched = None;
    for candidate in [current - 1, current, current + 1] {
        let equal: bool = code(secret, candidate)
            .as_bytes()
            .ct_eq(presented.as_bytes())
            .into();
        if equal && last_used.is_none_or(|last| candidate > last) {
            matched = Some(candidate);
        }
    }
    matched
}

/// RFC 4648 base32 without padding, as authenticator apps expect the secret.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Decodes [`base32`] (case-insensitive, padding and spaces ignored).
pub fn from_base32(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.chars().filter(|c| !c.is_whitespace() && *c != '=') {
        let value = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u32 - 'A' as u32,
            c @ '2'..='7' => c as u32 - '2' as u32 + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

/// The provisioning URI an authenticator app scans or imports.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let label: String =
        url::form_urlencoded::byte_serialize(format!("{issuer}:{account}").as_bytes()).collect();
    let issuer: String = url::form_urlencoded::byte_serialize(issuer.as_bytes()).collect();
    format!(
        "otpauth://totp/{label}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        base32(secret)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 rows (8 digits there; the last six are ours).
    #[test]
    fn rfc_6238_test_vectors() {
        let secret = b"12345678901234567890";
        for (time, expected) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(code(secret, step(time)), expected[2..], "t = {time}");
        }
    }

    #[test]
    fn a_code_is_accepted_once_and_within_one_step() {
        let secret = generate_secret();
        let now = 1_700_000_000;
        let current = code(&secret, step(now));
        assert_eq!(verify(&secret, &current, now, None), Some(step(now)));
        assert_eq!(
            verify(&secret, &current, now, Some(step(now))),
            None,
            "replayed"
        );
        let previous = code(&secret, step(now) - 1);
        assert_eq!(verify(&secret, &previous, now, None), Some(step(now) - 1));
        let stale = code(&secret, step(now) - 2);
        assert_eq!(verify(&secret, &stale, now, None), None, "two steps old");
        assert_eq!(verify(&secret, "12345", now, None), None);
        assert_eq!(verify(&secret, "abcdef", now, None), None);
    }

    #[test]
    fn base32_round_trips() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        for len in 0..25 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(from_base32(&base32(&bytes)).unwrap(), bytes);
        }
        assert_eq!(from_base32("mzxw 6ytb oi=="), Some(b"foobar".to_vec()));
        assert!(from_base32("MZ1").is_none());
    }
}
