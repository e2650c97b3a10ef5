//! The credential cache: what [`crate::devices::find_by_token_hash`] answered for a device
//! token (its row, queued commands and whether it has an open alert), and what [`crate::credentials::find_member_token`] answered for a member's (API token
//! or login session), kept in memory so that a heartbeat or an API call costs no database read.
//!
//! **It can never answer what the database no longer says.** Every store write to `devices`,
//! `command_executions` or a sampled metric's `alerts` *touches* what it changed (one device, a
//! tenant, or everything) after its commit, and so does every write that can end a member token (a revocation, a
//! logout, a user's deletion: [`Touch::Tenant`] of its tenant, which also costs that tenant's
//! devices one miss each); a touch kills every entry that depends on it:
//!
//! - A touch takes a new stamp from one counter (the epoch) and raises one *stripe* to it:
//!   the device's (one of [`DEVICE_STRIPES`]), the tenant's (one of [`TENANT_STRIPES`]) or
//!   the global one.
//! - A lookup that misses reads the epoch *before* it reads the database, and stores what it
//!   read with that epoch. An entry is answered only while none of its stripes (a device
//!   entry's device, tenant and global stripes; a member entry's tenant and global ones) is
//!   newer than its epoch.
//! - A member token's expiry cannot change, so an entry keeps it and a hit checks it.
//! - So a write that committed before the lookup's read was touched before or after the epoch
//!   was read: before, and the read saw the write; after, and the entry is dead at birth. A
//!   write that commits after the read touches after it, and kills the entry then. No
//!   interleaving leaves a live entry older than a committed write.
//!
//! Stripes are shared (two devices may share one), which costs a spurious miss, never a wrong
//! answer. On PostgreSQL other instances write too: their touches arrive as notifications on
//! [`CHANNEL`] (sent inside the writing transaction, so delivered at its commit) and are
//! applied here by [`crate::Db::apply_cache_notification`]. Until this instance listens, and
//! whenever the listening connection is lost, the cache is off ([`DeviceCache::follow`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use herd_domain::ids::{DeviceId, TenantId, TokenId, UserId};
use herd_domain::status::{MemberTokenKind, Role};

use crate::devices::DeviceRow;

/// The PostgreSQL notification channel that carries other instances' touches.
pub const CHANNEL: &str = "herd_cache";

/// Device stripes: a touch of one device kills entries of 1 in 65,536 of the fleet.
const DEVICE_STRIPES: usize = 1 << 16;
/// Tenant stripes.
const TENANT_STRIPES: usize = 1 << 8;
/// Independently locked maps, so that concurrent lookups rarely share a lock.
const SHARDS: usize = 64;
/// The most device ids one notification names (a payload must stay under 8,000 bytes; an id
/// takes 37).
pub(crate) const IDS_PER_NOTIFICATION: usize = 200;

/// What a write changed, for the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// One device's row, token or queued commands.
    Device(DeviceId),
    /// Every device of a tenant (a command to the whole tenant, say).
    Tenant(TenantId),
    /// Anything at all (notifications may have been missed).
    All,
}

/// What a lookup answers: the device's tenant, its row and its queued commands.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    pub tenant: TenantId,
    pub device: DeviceRow,
    pub pending_commands: i64,
    /// An open alert of a sampled metric (not `offline`).
    pub alerting: bool,
}

/// What a member lookup answers: a live token of a tenant, with its (fixed) expiry.
#[derive(Debug, Clone)]
pub(crate) struct CachedMember {
    pub tenant: TenantId,
    pub id: TokenId,
    pub kind: MemberTokenKind,
    pub role: Role,
    pub platform_admin: bool,
    pub user_id: Option<UserId>,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// What an entry depends on: the stripes whose touches kill it.
trait Depends {
    fn tenant(&self) -> TenantId;
    fn device(&self) -> Option<DeviceId>;
}

impl Depends for Cached {
    fn tenant(&self) -> TenantId {
        self.tenant
    }
    fn device(&self) -> Option<DeviceId> {
        Some(self.device.id)
    }
}

impl Depends for CachedMember {
    fn tenant(&self) -> TenantId {
        self.tenant
    }
    fn device(&self) -> Option<DeviceId> {
        None
    }
}

struct Entry<V> {
    value: V,
    epoch: u64,
}

/// Entries by token hash (as bytes).
type Shard<V> = HashMap<[u8; 32], Entry<V>>;
type Shards<V> = Box<[Mutex<Shard<V>>]>;

/// Lookups since start, by result (for `/metrics`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Entries held now.
    pub entries: u64,
}

/// See the module documentation.
pub(crate) struct DeviceCache {
    /// The most entries per shard; 0 turns the cache off.
    per_shard: usize,
    shards: Shards<Cached>,
    members: Shards<CachedMember>,
    epoch: AtomicU64,
    devices: Box<[AtomicU64]>,
    tenants: Box<[AtomicU64]>,
    global: AtomicU64,
    /// False while this instance may be missing other instances' touches.
    following: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for DeviceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCache").field("capacity", &(self.per_shard * SHARDS)).finish_non_exhaustive()
    }
}

/// The stripe of an id: UUIDv7's last eight bytes are random.
fn stripe(uuid: &uuid::Uuid, stripes: usize) -> usize {
    let bytes = uuid.as_bytes();
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&bytes[8..]);
    (u64::from_le_bytes(tail) as usize) & (stripes - 1)
}

/// A token hash (64 hex digits) as bytes; `None` for anything else, which is then not cached.
fn key(hash: &str) -> Option<[u8; 32]> {
    let hex = hash.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = digit(hex[2 * i])? << 4 | digit(hex[2 * i + 1])?;
    }
    Some(key)
}

fn lock<'a, V>(shards: &'a Shards<V>, key: &[u8; 32]) -> std::sync::MutexGuard<'a, Shard<V>> {
    shards[usize::from(key[0]) % SHARDS].lock().unwrap_or_else(|e| e.into_inner())
}

fn zeroed(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl DeviceCache {
    /// A cache of at most `capacity` entries (0: off). `following` says whether it may answer
    /// from the start (SQLite, where this process makes every write) or only once
    /// [`DeviceCache::follow`] says other instances' touches arrive.
    pub(crate) fn new(capacity: usize, following: bool) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        Self {
            per_shard,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            members: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            epoch: AtomicU64::new(1),
            devices: zeroed(if per_shard == 0 { 1 } else { DEVICE_STRIPES }),
            tenants: zeroed(if per_shard == 0 { 1 } else { TENANT_STRIPES }),
            global: AtomicU64::new(0),
            following: AtomicBool::new(following),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn enabled(&self) -> bool {
        self.per_shard > 0 && self.following.load(Ordering::SeqCst)
    }

    fn alive<V: Depends>(&self, entry: &Entry<V>) -> bool {
        let fresh = |stripes: &[AtomicU64], uuid: &uuid::Uuid| {
            stripes[stripe(uuid, stripes.len())].load(Ordering::SeqCst) <= entry.epoch
        };
        entry.value.device().is_none_or(|device| fresh(&self.devices, &device.0))
            && fresh(&self.tenants, &entry.value.tenant().0)
            && self.global.load(Ordering::SeqCst) <= entry.epoch
    }

    /// The live entry for `key` in `shards`, if any (a dead one is dropped).
    fn lookup<V: Depends + Clone>(&self, shards: &Shards<V>, key: &[u8; 32]) -> Option<V> {
        let mut shard = lock(shards, key);
        match shard.get(key) {
            Some(entry) if self.alive(entry) => Some(entry.value.clone()),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `entry` for `key` in `shards` unless it is dead already; a full shard drops an
    /// arbitrary entry.
    fn keep<V: Depends>(&self, shards: &Shards<V>, key: [u8; 32], entry: Entry<V>) {
        if !self.alive(&entry) {
            return;
        }
        let mut shard = lock(shards, &key);
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            if let Some(victim) = shard.keys().next().copied() {
                shard.remove(&victim);
            }
        }
        shard.insert(key, entry);
    }

    /// The entry for device token `hash`, if one is alive.
    pub(crate) fn get(&self, hash: &str) -> Option<Cached> {
        if !self.enabled() {
            return None;
        }
        let key = key(hash)?;
        let found = self.lookup(&self.shards, &key);
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// The epoch to read the database under: call it *before* the read whose answer
    /// [`DeviceCache::put`] or [`DeviceCache::put_member`] stores.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Keeps what a read begun at `epoch` answered for device token `hash` (dead at once if a
    /// touch came since).
    pub(crate) fn put(&self, hash: &str, value: Cached, epoch: u64) {
        if !self.enabled() {
            return;
        }
        let Some(key) = key(hash) else { return };
        self.keep(&self.shards, key, Entry { value, epoch });
    }

    /// The entry for member token `hash`, if one is alive (expired or not: the caller checks
    /// the expiry against its clock).
    pub(crate) fn member(&self, hash: &str) -> Option<CachedMember> {
        if !self.enabled() {
            return None;
        }
        self.lookup(&self.members, &key(hash)?)
    }

    /// As [`DeviceCache::put`], for a member token.
    pub(crate) fn put_member(&self, hash: &str, value: CachedMember, epoch: u64) {
        if !self.enabled() {
            return;
        }
        let Some(key) = key(hash) else { return };
        self.keep(&self.members, key, Entry { value, epoch });
    }

    /// Notes in a member token's entry (if any) that its use was recorded at `at`, so that the
    /// next hits do not record it again within the minute.
    pub(crate) fn member_used(&self, hash: &str, at: i64) {
        let Some(key) = key(hash) else { return };
        if let Some(entry) = lock(&self.members, &key).get_mut(&key) {
            entry.value.last_used_at = Some(at);
        }
    }

    /// Kills every entry that depends on `touch`.
    pub(crate) fn touch(&self, touch: Touch) {
        let stamp = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let stripe = match touch {
            Touch::Device(device) => &self.devices[stripe(&device.0, self.devices.len())],
            Touch::Tenant(tenant) => &self.tenants[stripe(&tenant.0, self.tenants.len())],
            Touch::All => &self.global,
        };
        stripe.fetch_max(stamp, Ordering::SeqCst);
    }

    /// Says whether other instances' touches reach this one. Off: the cache answers nothing
    /// (and keeps nothing). On again: everything cached before is dropped, since touches may
    /// have been missed in between.
    pub(crate) fn follow(&self, following: bool) {
        if following {
            self.touch(Touch::All);
            for shard in self.shards.iter() {
                shard.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            for shard in self.members.iter() {
                shard.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
        }
        self.following.store(following, Ordering::SeqCst);
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let entries =
            self.shards.iter().map(|shard| shard.lock().unwrap_or_else(|e| e.into_inner()).len() as u64).sum();
        CacheStats { hits: self.hits.load(Ordering::Relaxed), misses: self.misses.load(Ordering::Relaxed), entries }
    }
}

/// The notification payloads that carry `touches` to other instances: `origin kind ids…`,
/// where kind is `d` (device ids), `t` (tenant ids) or `*`.
pub(crate) fn payloads(origin: &str, touches: &[Touch]) -> Vec<String> {
    if touches.contains(&Touch::All) {
        return vec![format!("{origin} *")];
    }
    let ids = |kind: &str, id_of: fn(&Touch) -> Option<String>| -> Vec<String> {
        let ids: Vec<String> = touches.iter().filter_map(id_of).collect();
        ids.chunks(IDS_PER_NOTIFICATION).map(|chunk| format!("{origin} {kind} {}", chunk.join(" "))).collect()
    };
    let mut out = ids("d", |t| match t {
        Touch::Device(id) => Some(id.to_string()),
        _ => None,
    });
    out.extend(ids("t", |t| match t {
        Touch::Tenant(id) => Some(id.to_string()),
        _ => None,
    }));
    out
}

/// The touches a notification carries, unless it is this instance's own (`origin`). A payload
/// that cannot be read touches everything.
pub(crate) fn parse_payload(origin: &str, payload: &str) -> Vec<Touch> {
    let mut words = payload.split(' ');
    let (Some(from), Some(kind)) = (words.next(), words.next()) else { return vec![Touch::All] };
    if from == origin {
        return Vec::new();
    }
    let parsed: Option<Vec<Touch>> = match kind {
        "*" => Some(vec![Touch::All]),
        "d" => words.map(|w| w.parse().ok().map(Touch::Device)).collect(),
        "t" => words.map(|w| w.parse().ok().map(Touch::Tenant)).collect(),
        _ => None,
    };
    parsed.unwrap_or_else(|| vec![Touch::All])
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_domain::status::DeviceStatus;

    const HASH: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn cached(tenant: TenantId, device: DeviceId) -> Cached {
        Cached {
            tenant,
            pending_commands: 0,
            alerting: false,
            device: DeviceRow {
                id: device,
                name: "d".into(),
                serial_number: None,
                mac_address: None,
                android_id: None,
                model: None,
                manufacturer: None,
                os_version: None,
                app_version: None,
                firmware_version: None,
                ip_address: None,
                location: None,
                tags: crate::Json(Vec::new()),
                status: DeviceStatus::Online,
                last_seen: None,
                created_at: 0,
                updated_at: 0,
            },
        }
    }

    fn hash(n: u8) -> String {
        format!("{n:02x}{}", &HASH[2..])
    }

    #[test]
    fn a_touch_after_the_epoch_was_read_kills_what_that_read_stores() {
        let cache = DeviceCache::new(100, true);
        let (tenant, device) = (TenantId::new(), DeviceId::new());
        // The read began, a write committed and touched, then the read's answer arrives.
        let epoch = cache.epoch();
        cache.touch(Touch::Device(device));
        cache.put(HASH, cached(tenant, device), epoch);
        assert!(cache.get(HASH).is_none(), "an answer older than a touch is never kept");
        // A read begun after the touch is kept, until the next touch of the device.
        let epoch = cache.epoch();
        cache.put(HASH, cached(tenant, device), epoch);
        assert_eq!(cache.get(HASH).map(|c| c.device.id), Some(device));
        cache.touch(Touch::Device(device));
        assert!(cache.get(HASH).is_none());
        assert_eq!(cache.stats().hits, 1);
    }

    #[test]
    fn tenant_and_global_touches_kill_their_entries_and_others_stay() {
        let cache = DeviceCache::new(100, true);
        let (tenant, other_tenant) = (TenantId::new(), TenantId::new());
        let put = |n: u8, tenant: TenantId| {
            let epoch = cache.epoch();
            cache.put(&hash(n), cached(tenant, DeviceId::new()), epoch);
        };
        put(1, tenant);
        put(2, other_tenant);
        cache.touch(Touch::Tenant(tenant));
        assert!(cache.get(&hash(1)).is_none());
        // (Tenant stripes are shared by 1 in 256 tenants; this pair could collide.)
        if stripe(&tenant.0, TENANT_STRIPES) != stripe(&other_tenant.0, TENANT_STRIPES) {
            assert!(cache.get(&hash(2)).is_some(), "another tenant's entry stays");
        }
        put(1, tenant);
        cache.touch(Touch::All);
        assert!(cache.get(&hash(1)).is_none() && cache.get(&hash(2)).is_none());
    }

    #[test]
    fn an_instance_not_following_others_answers_nothing_and_refollowing_forgets_everything() {
        let cache = DeviceCache::new(100, false);
        let (tenant, device) = (TenantId::new(), DeviceId::new());
        cache.put(HASH, cached(tenant, device), cache.epoch());
        assert!(cache.get(HASH).is_none(), "not following: nothing kept");
        cache.follow(true);
        cache.put(HASH, cached(tenant, device), cache.epoch());
        assert!(cache.get(HASH).is_some());
        cache.follow(false);
        assert!(cache.get(HASH).is_none());
        cache.follow(true);
        assert!(cache.get(HASH).is_none(), "what was kept before a gap is gone");
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity_and_zero_turns_it_off() {
        let cache = DeviceCache::new(64, true);
        for n in 0..=255u8 {
            cache.put(&hash(n), cached(TenantId::new(), DeviceId::new()), cache.epoch());
        }
        assert!(cache.stats().entries <= 64, "{:?}", cache.stats());
        let off = DeviceCache::new(0, true);
        off.put(HASH, cached(TenantId::new(), DeviceId::new()), off.epoch());
        assert!(off.get(HASH).is_none());
        assert!(key("not-a-hash").is_none() && key(&HASH.to_uppercase()).is_none());
    }

    fn member(tenant: TenantId) -> CachedMember {
        CachedMember {
            tenant,
            id: TokenId::new(),
            kind: MemberTokenKind::Api,
            role: Role::Viewer,
            platform_admin: false,
            user_id: None,
            expires_at: None,
            last_used_at: None,
        }
    }

    #[test]
    fn a_member_entry_dies_with_its_tenant_and_everything_but_not_with_a_device() {
        let cache = DeviceCache::new(100, true);
        let tenant = TenantId::new();
        // The epoch race, as for devices: a revocation between the read and the put wins.
        let epoch = cache.epoch();
        cache.touch(Touch::Tenant(tenant));
        cache.put_member(HASH, member(tenant), epoch);
        assert!(cache.member(HASH).is_none(), "an answer older than a revocation is never kept");

        cache.put_member(HASH, member(tenant), cache.epoch());
        cache.touch(Touch::Device(DeviceId::new()));
        assert!(cache.member(HASH).is_some(), "a device's change does not touch member tokens");
        cache.member_used(HASH, 42);
        assert_eq!(cache.member(HASH).and_then(|m| m.last_used_at), Some(42));
        // A device token with the same hash is another map: no answer crosses over.
        assert!(cache.get(HASH).is_none());
        cache.touch(Touch::Tenant(tenant));
        assert!(cache.member(HASH).is_none(), "a revocation in the tenant kills its tokens' entries");

        cache.put_member(HASH, member(tenant), cache.epoch());
        cache.touch(Touch::All);
        assert!(cache.member(HASH).is_none());
        cache.put_member(HASH, member(tenant), cache.epoch());
        cache.follow(false);
        assert!(cache.member(HASH).is_none(), "not following: nothing answered");
        cache.follow(true);
        assert!(cache.member(HASH).is_none(), "what was kept before a gap is gone");
    }

    #[test]
    fn payloads_round_trip_and_skip_their_own_origin() {
        let devices: Vec<DeviceId> = (0..450).map(|_| DeviceId::new()).collect();
        let tenant = TenantId::new();
        let mut touches: Vec<Touch> = devices.iter().copied().map(Touch::Device).collect();
        touches.push(Touch::Tenant(tenant));
        let sent = payloads("me", &touches);
        assert_eq!(sent.len(), 4, "450 devices in three notifications and the tenant in one");
        assert!(sent.iter().all(|p| p.len() < 8000));
        let back: Vec<Touch> = sent.iter().flat_map(|p| parse_payload("you", p)).collect();
        assert_eq!(back, touches);
        assert!(parse_payload("me", &sent[0]).is_empty());
        assert_eq!(parse_payload("you", "x d not-an-id"), vec![Touch::All]);
        assert_eq!(parse_payload("you", "garbage"), vec![Touch::All]);
        assert_eq!(payloads("me", &[Touch::All, Touch::Tenant(tenant)]), vec!["me *".to_string()]);
    }
}
