//! Notifications from other instances (PostgreSQL `LISTEN`): queued commands
//! ([`crate::commands::CHANNEL`]) and device cache touches ([`crate::cache::CHANNEL`]), on one
//! connection per instance.

/// What another instance announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A command was queued (`origin tenant device-or-*`).
    Command(String),
    /// Devices changed (`origin kind ids…`); hand it to [`crate::Db::apply_cache_notification`].
    Cache(String),
}

/// Listens on every channel herd notifies on.
pub struct Listener {
    inner: sqlx::postgres::PgListener,
}

impl Listener {
    /// A listening connection; `None` on SQLite, where one process owns the database and makes
    /// every write itself.
    pub async fn connect(db: &crate::Db) -> Result<Option<Listener>, crate::StoreError> {
        let crate::Pools::Postgres(pool) = &db.pools else { return Ok(None) };
        let mut inner = sqlx::postgres::PgListener::connect_with(pool).await?;
        inner.listen_all([crate::commands::CHANNEL, crate::cache::CHANNEL]).await?;
        Ok(Some(Listener { inner }))
    }

    /// The next notification; `Ok(None)` when the connection was lost: what was sent since is
    /// lost, so the caller treats everything as changed and connects again.
    pub async fn recv(&mut self) -> Result<Option<Notification>, crate::StoreError> {
        let Some(notification) = self.inner.try_recv().await? else { return Ok(None) };
        let payload = notification.payload().to_string();
        Ok(Some(if notification.channel() == crate::cache::CHANNEL {
            Notification::Cache(payload)
        } else {
            Notification::Command(payload)
        }))
    }
}
