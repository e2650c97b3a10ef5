//! Who may touch a tenant's rows: [`TenantScope`] and the [`System`] principal.

use herd_domain::ids::TenantId;

use crate::Db;

/// The proof that the holder may touch one tenant's data. Store modules take it and bind its
/// tenant id into every query they run.
///
/// Only this crate makes one: a credential lookup answers with the scope of the credential's
/// tenant (the server's auth extractors call those lookups), and [`TenantScope::for_system`]
/// makes one for a job that holds the [`System`] principal. Its fields are private, so no
/// caller can name a tenant it was not authenticated for.
#[derive(Debug, Clone)]
pub struct TenantScope {
    pub(crate) db: Db,
    pub(crate) tenant_id: TenantId,
}

impl TenantScope {
    pub(crate) fn new(db: Db, tenant_id: TenantId) -> Self {
        Self { db, tenant_id }
    }

    /// The background-job principal (STYLE.md "Background work acts as an explicit system
    /// principal"): a job that has read a tenant id from a row it owns may act in that tenant.
    pub fn for_system(_system: &System, db: &Db, tenant_id: TenantId) -> Self {
        Self::new(db.clone(), tenant_id)
    }

    /// The tenant this scope is bound to.
    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }
}

/// The internal principal of background jobs and the command line: holding one is a statement
/// in the code that no request is behind the action. [`Db::open`] hands out the only one; it is
/// neither `Clone` nor constructible elsewhere, so a request handler cannot conjure it.
#[derive(Debug)]
pub struct System(());

impl System {
    pub(crate) fn new() -> Self {
        System(())
    }
}
