//! The device registry (the seed's DevicesService): auto-registration, manual creation,
//! connection (heartbeat), listing and editing — all tenant-scoped — and the claims that
//! unproven re-registrations become.
//!
//! `routes` holds the wire types and handlers; `store` the SQL. Device rows are reached only
//! through [`store::DeviceStore`], which is built from a [`crate::auth::TenantScope`].

pub(crate) mod claims;
pub(crate) mod routes;
pub(crate) use herd_store::devices as store;
