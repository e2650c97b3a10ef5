//! herd's domain vocabulary, shared by the store and the server: typed ids, the closed sets of
//! values herd stores (roles, statuses, metrics), the [`Event`] enum, and the clock.
//!
//! This crate knows nothing of HTTP or SQL: it has no axum, runs no query and names no table
//! (the `sqlx` feature only lets ids and enums encode themselves as TEXT). The store crate
//! depends on it; it depends on nothing of herd's.
#![forbid(unsafe_code)]

mod text_enum;

pub mod clock;
pub mod event;
pub mod ids;
pub mod monitoring;
pub mod status;
pub mod tags;

pub use event::Event;
pub use text_enum::UnknownValue;
