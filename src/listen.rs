//! Following the other instances on one PostgreSQL: the loop that receives their
//! notifications (one `LISTEN` connection per instance) and hands each to what it concerns.
//!
//! - A queued command wakes this instance's long polls ([`crate::commands::waiters`]).
//! - A device cache touch kills this instance's cached credentials (`herd_store::cache`).
//!
//! While the connection is down, notifications are lost: every poll is woken to re-check, and
//! the device cache is off (every heartbeat reads the database) until listening again.

use std::sync::Arc;
use std::time::Duration;

use herd_store::listen::{Listener, Notification};
use herd_store::Db;

use crate::commands::waiters::Waiters;
use crate::shutdown::CancellationToken;

/// Follows other instances until `shutdown` (PostgreSQL only; on SQLite it returns at once).
/// Reconnects after a failure, treating everything as changed each time.
pub(crate) async fn follow_other_instances(db: Db, waiters: Arc<Waiters>, shutdown: CancellationToken) {
    loop {
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            connected = Listener::connect(&db) => connected,
        };
        let mut listener = match connected {
            Ok(Some(listener)) => listener,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(%error, "cannot listen for other instances' notifications; retrying in 1 s");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // Whatever was sent before this connection listened is unknown.
        db.follow_other_instances(true);
        waiters.wake_all();
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                received = listener.recv() => received,
            };
            match received {
                Ok(Some(Notification::Command(payload))) => waiters.on_notification(&payload),
                Ok(Some(Notification::Cache(payload))) => db.apply_cache_notification(&payload),
                Ok(None) => {
                    tracing::warn!("the notification connection was lost; reconnecting");
                    break;
                }
                Err(error) => {
                    tracing::error!(%error, "notifications failed; reconnecting");
                    break;
                }
            }
        }
        db.follow_other_instances(false);
        waiters.wake_all();
    }
}
