//! An access token as the broker hands it out: the token, kept secret, and the JSON string the
//! API answers it as, made once when Entra issued it. A cached hit copies that string into its
//! answer as it is: checking and quoting the ~1.5 KB JWT on every hit was a twentieth of a
//! cached token request's work.

use secrecy::{ExposeSecret, SecretString};
use serde_json::value::RawValue;
use zeroize::Zeroize;

/// No `Debug`: nothing that holds one can print it by mistake.
pub struct AccessToken {
    secret: SecretString,
    /// `secret` as a JSON string; `None` only while it is wiped on drop.
    json: Option<Box<RawValue>>,
}

impl AccessToken {
    pub fn new(secret: SecretString) -> Self {
        let json = json_string(secret.expose_secret());
        Self {
            secret,
            json: Some(json),
        }
    }

    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// The token as a JSON string, for the API's answer.
    pub fn as_json(&self) -> &RawValue {
        self.json.as_deref().expect("present until dropped")
    }
}

impl ExposeSecret<str> for AccessToken {
    fn expose_secret(&self) -> &str {
        self.secret.expose_secret()
    }
}

/// The JSON copy is as secret as the token: wiped like the `SecretString` beside it.
impl Drop for AccessToken {
    fn drop(&mut self) {
        if let Some(json) = self.json.take() {
            let mut text: Box<str> = json.into();
            text.zeroize();
        }
    }
}

/// `text` as a JSON string. A JWT (base64url and dots) has nothing to escape: a quoted text
/// without a backslash that parses as one JSON string is that text, copied as it is.
fn json_string(text: &str) -> Box<RawValue> {
    if !text.contains('\\') {
        // Sized exactly, so that boxing it moves no copy of the token.
        let mut quoted = String::with_capacity(text.len() + 2);
        quoted.push('"');
        quoted.push_str(text);
        quoted.push('"');
        if let Ok(raw) = RawValue::from_string(quoted) {
            return raw;
        }
    }
    serde_json::value::to_raw_value(text).expect("a str is a JSON string")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_text_is_answered_as_the_same_json_string() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4In0.c2ln-_";
        for text in [
            jwt,
            "",
            "a\"b",
            "a\\\"b",
            "back\\slash",
            "line\nbreak",
            "tab\t",
            "é ☃",
        ] {
            let raw = json_string(text);
            let back: String = serde_json::from_str(raw.get()).unwrap();
            assert_eq!(back, text, "{}", raw.get());
        }
        assert_eq!(
            json_string(jwt).get(),
            format!("\"{jwt}\""),
            "copied as it is"
        );
    }

    #[test]
    fn the_secret_is_the_token_as_issued() {
        let token = AccessToken::new(SecretString::from("a\"b".to_string()));
        assert_eq!(token.expose_secret(), "a\"b");
        assert_eq!(token.as_json().get(), r#""a\"b""#);
    }
}
