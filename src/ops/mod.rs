//! Ops users' credentials: argon2id passwords and TOTP second factors. The dashboard that
//! uses them is in `http::ops`; the users themselves are stored by `storage::ops_users`.

pub mod password;
pub mod totp;
