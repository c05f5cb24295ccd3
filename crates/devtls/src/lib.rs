//! Certificates and TLS for samvault's dev doubles: the CPV app's self-signed certificate
//! (`samvault dev-cert`), a test CA with a server certificate for `127.0.0.1`, and a TLS
//! listener that lets the dev IdP and the Key Vault double speak HTTPS. Test fixtures, never
//! a production CA.

pub mod certificate;
pub mod listener;

pub use certificate::{self_signed, write_self_signed, write_test_ca};
pub use listener::{TlsListener, server_config};
