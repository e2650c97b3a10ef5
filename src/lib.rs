//! herd: a self-hosted, multi-tenant device provisioning and fleet management server.
//!
//! The library holds everything; `main.rs` only parses the command line and calls
//! [`cli::run`]. Tests start the real server through [`app::App::build`] on port 0.
//! See ARCHITECTURE.md for the map of modules and the invariants they keep.
#![forbid(unsafe_code)]

/// The bounds on `POST /auth/login` (in `AppState`; tests take its hashing turns).
pub use auth::limits as login_limits;
pub use herd_domain::{clock, ids};
pub use herd_store as store;

pub mod app;
mod auth;
pub mod backup;
pub mod blobs;
pub mod certificates;
pub mod cli;
mod client;
pub mod commands;
pub mod config;
mod configurations;
mod console;
mod devices;
pub mod events;
mod files;
mod health;
mod http;
pub mod jobs;
mod listen;
pub mod monitoring;
mod openapi;
mod packages;
pub mod presence;
pub mod rollouts;
mod settings;
pub mod shutdown;
pub mod telemetry;
mod telemetry_metrics;
mod tenants;
pub mod webhooks;
