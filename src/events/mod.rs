//! Events at the edge: `GET /events` and the SSE stream. The closed [`Event`] enum lives in
//! herd-domain; the store writes events into the outbox at commit ([`herd_store::Tx::record`]),
//! so a committed change always has its event and a rolled-back one never does.

pub(crate) mod routes;
pub(crate) mod schema;
pub mod stream;
pub use herd_domain::event::KNOWN_TYPES;
pub use herd_domain::Event;
pub use herd_store::events as store;
