//! samvault: a consent and refresh-token vault for Microsoft Secure Application Model CPVs.
//!
//! The tree mirrors the architecture (see `docs/ARCHITECTURE.md`):
//! `http` (onboarding, integrations API, health) → `broker` (token exchange) →
//! `idp` (talks to Entra ID) and `vault` (seals refresh tokens) → `storage`.
//! `devidp` is the Entra-compatible simulator used by the demo and the tests; `devkv` the
//! Azure Key Vault test double.

pub mod app;
pub mod broker;
pub mod cli;
pub mod clients;
pub mod config;
pub mod devidp;
pub mod devkv;
pub mod domain;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod idp;
pub mod key_rotation;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod rotation;
pub mod storage;
pub mod vault;
