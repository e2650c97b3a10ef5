//! Long-poll wake-ups: which devices wait in `GET /devices/self/commands?wait=` on this
//! instance, and how a queued command reaches them within milliseconds, without a socket per
//! device and without a sleep loop.
//!
//! A waiting poll registers its device here *before* it checks the database, then sleeps on a
//! [`Notify`]; whatever queues a command wakes the device (or, for a bulk command, every
//! waiter of the tenant), and the poll checks again. The instance that queued the command wakes
//! its own waiters at once; on PostgreSQL the same commit sends `NOTIFY herd_commands` with
//! `origin tenant device-or-*`, and every other instance's [`crate::listen`] loop wakes its waiters.
//! When the listening connection drops, notifications may have been missed, so every waiter is
//! woken (each re-checks; nothing is lost, a few reads are spent).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, Semaphore, SemaphorePermit};

use herd_domain::ids::{DeviceId, TenantId};

struct Slot {
    tenant: TenantId,
    notify: Arc<Notify>,
    /// Polls of this device waiting now (a device may hold more than one).
    polls: usize,
}

/// The devices whose polls wait on this instance.
pub struct Waiters {
    slots: Mutex<HashMap<DeviceId, Slot>>,
    /// This process's name in notifications, so that it skips its own.
    origin: String,
    /// Turns at the database for woken polls. A bulk command wakes every waiting device at
    /// once; without a bound, thousands of polls would each wait for a pool connection and the
    /// slowest would fail with the pool's timeout (measured: 21,558 such 500s delivering one
    /// command to 10,000 devices on PostgreSQL). With it they queue here, in memory, and the
    /// pool keeps connections for every other request.
    turns: Semaphore,
}

/// Polls at the database at once, per instance (PostgreSQL's pool has 24 connections).
const DATABASE_TURNS: usize = 12;

impl Default for Waiters {
    fn default() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            origin: uuid::Uuid::new_v4().simple().to_string(),
            turns: Semaphore::new(DATABASE_TURNS),
        }
    }
}

/// A registered poll; dropping it unregisters.
pub(crate) struct Registration<'w> {
    waiters: &'w Waiters,
    device: DeviceId,
    pub notify: Arc<Notify>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut slots = self.waiters.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(&self.device) {
            slot.polls -= 1;
            if slot.polls == 0 {
                slots.remove(&self.device);
            }
        }
    }
}

impl Waiters {
    /// This instance's origin tag (sent with its notifications).
    pub(crate) fn origin(&self) -> &str {
        &self.origin
    }

    /// A turn at the database for one poll's check (see `turns`).
    pub(crate) async fn database_turn(&self) -> SemaphorePermit<'_> {
        // The semaphore is never closed, so acquiring cannot fail.
        self.turns.acquire().await.expect("the turns semaphore is never closed")
    }

    /// How many devices wait now (for tests and `/metrics`).
    pub fn waiting(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn register(&self, tenant: TenantId, device: DeviceId) -> Registration<'_> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.entry(device).or_insert_with(|| Slot { tenant, notify: Arc::new(Notify::new()), polls: 0 });
        slot.polls += 1;
        Registration { waiters: self, device, notify: slot.notify.clone() }
    }

    pub(crate) fn wake_device(&self, device: DeviceId) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get(&device) {
            slot.notify.notify_waiters();
        }
    }

    pub(crate) fn wake_tenant(&self, tenant: TenantId) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots.values().filter(|slot| slot.tenant == tenant) {
            slot.notify.notify_waiters();
        }
    }

    pub(crate) fn wake_all(&self) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots.values() {
            slot.notify.notify_waiters();
        }
    }

    /// Acts on a notification `origin tenant device-or-*` from another instance.
    pub(crate) fn on_notification(&self, payload: &str) {
        let mut parts = payload.split(' ');
        let (Some(origin), Some(tenant), Some(target)) = (parts.next(), parts.next(), parts.next()) else {
            tracing::warn!(payload, "malformed command notification; waking every poll");
            return self.wake_all();
        };
        if origin == self.origin {
            return;
        }
        match (tenant.parse::<TenantId>(), target) {
            (Ok(tenant), "*") => self.wake_tenant(tenant),
            (Ok(_), device) => match device.parse::<DeviceId>() {
                Ok(device) => self.wake_device(device),
                Err(_) => self.wake_all(),
            },
            (Err(_), _) => self.wake_all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_notification_wakes_the_named_device_or_the_tenant_but_never_its_own_origin() {
        let waiters = Waiters::default();
        let (tenant, other_tenant) = (TenantId::new(), TenantId::new());
        let (device, other) = (DeviceId::new(), DeviceId::new());
        let mine = waiters.register(tenant, device);
        let theirs = waiters.register(other_tenant, other);
        fn woken(notify: &Notify) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
            let mut notified = Box::pin(notify.notified());
            notified.as_mut().enable();
            notified
        }

        {
            let (mut a, mut b) = (woken(&mine.notify), woken(&theirs.notify));
            waiters.on_notification(&format!("elsewhere {tenant} {device}"));
            assert!(futures::poll!(a.as_mut()).is_ready());
            assert!(futures::poll!(b.as_mut()).is_pending(), "another tenant's device is not woken");
        }
        {
            let mut a = woken(&mine.notify);
            waiters.on_notification(&format!("{} {tenant} *", waiters.origin()));
            assert!(futures::poll!(a.as_mut()).is_pending(), "an instance skips its own notifications");
            waiters.on_notification(&format!("elsewhere {tenant} *"));
            assert!(futures::poll!(a.as_mut()).is_ready());
        }
        assert_eq!(waiters.waiting(), 2);
        drop(mine);
        drop(theirs);
        assert_eq!(waiters.waiting(), 0);
    }
}
