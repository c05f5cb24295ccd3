//! samvault: a consent and refresh-token vault for Microsoft Secure Application Model CPVs.
//!
//! The tree mirrors the architecture (see `docs/ARCHITECTURE.md`):
//! `http` (onboarding, integrations API, health) → `broker` (token exchange) →
//! `idp` (talks to Entra ID) and `vault` (seals refresh tokens) → `storage`.
//! The command line is the binary's (`src/cli/`); the dev doubles (the Entra simulator, the Key
//! Vault double) are crates of their own under `crates/`, which this library never imports.

pub mod app;
pub mod audit_chain;
pub mod backoff;
pub mod broker;
pub mod clients;
pub mod config;
pub mod customers;
pub mod domain;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod idp;
pub mod key_rotation;
pub mod metrics;
pub mod notify;
pub mod onboarding;
pub mod ops;
pub mod partner_center;
pub mod rotation;
pub mod storage;
pub mod vault;
