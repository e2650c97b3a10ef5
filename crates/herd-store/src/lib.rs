//! herd's storage: the database handle, the migrations, the outbox and every query herd runs.
//! It is the only crate that knows there are two SQL engines, and it has no HTTP.
//!
//! A tenant's rows are reached only through a [`TenantScope`], which this crate alone makes:
//! from a credential lookup ([`credentials`], [`devices::find_by_token_hash`]) or, for a job,
//! from the [`System`] principal that only [`Db::open`] hands out. Feature modules bind the
//! scope's tenant id into every query they run.
//!
//! [`Db`] is SQLite (embedded default; one writer connection plus a small pool of readers,
//! WAL) or PostgreSQL (one pool). Feature stores write each query once with `$N`
//! placeholders, which both engines accept, and run it through [`with_writer!`],
//! [`with_reader!`] or [`with_tx!`]: the macro expands the same code once per engine, so the
//! business logic never branches on the dialect. Where the dialects really differ, the
//! feature store matches on [`Db::engine`] next to the query.
//!
//! Portable representation: ids are text (UUIDv7), times are `BIGINT` milliseconds since the
//! epoch, booleans are `BOOLEAN` (an integer on SQLite), JSON documents are text.

#![forbid(unsafe_code)]

pub mod backup;
pub mod cache;
pub mod certificates;
pub mod claims;
pub mod commands;
pub mod configurations;
pub mod credentials;
pub mod devices;
pub mod events;
pub mod listen;
pub mod monitoring;
pub mod packages;
pub mod presence;
pub mod rollouts;
pub mod settings;
pub mod telemetry;
pub mod tenants;
pub mod webhooks;

mod arrivals;
mod group;
mod json;
mod page;
mod registrations;
mod samples;
mod scope;
#[cfg(test)]
mod test_db;

pub use json::Json;
pub use page::Page;
pub use scope::{System, TenantScope};

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool};

use herd_domain::ids::{EventId, TenantId};
use herd_domain::Event;

use cache::{DeviceCache, Touch};

/// Which SQL engine a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A handle to the database. Cheap to clone (pools are reference-counted).
///
/// On SQLite, reads run on the reader pool ([`with_reader!`]) and never queue behind the one
/// writer; a read that must see the caller's own uncommitted writes runs inside its [`Tx`].
#[derive(Debug, Clone)]
pub struct Db {
    /// Private: code outside this crate cannot reach a connection, so it cannot run SQL.
    pools: Pools,
    /// Private: only this crate's writes touch it, so none can skip the touch ([`cache`]).
    cache: Arc<DeviceCache>,
    /// This instance's name in cache notifications, so that it skips its own.
    origin: Arc<str>,
    /// Group commit of small metric ingests ([`samples`]).
    samples: samples::SampleQueue,
    /// Group commit of certificate issuance ([`certificates::record_issued`]).
    issues: Arc<certificates::IssueGroup>,
    /// Group commit of devices coming online ([`arrivals`]).
    arrivals: Arc<arrivals::ArrivalGroup>,
    /// Group commit of first registrations ([`registrations`]).
    registrations: Arc<registrations::RegistrationGroup>,
}

#[derive(Debug, Clone)]
enum Pools {
    /// SQLite allows one writer at a time; funnelling writes through a single connection
    /// turns lock contention (`SQLITE_BUSY`) into queueing, and readers never block on WAL.
    Sqlite {
        writer: SqlitePool,
        reader: SqlitePool,
    },
    Postgres(PgPool),
}

/// An open transaction on either engine, with the events it will announce.
pub struct Tx {
    /// The connection; private, so that only [`Tx::commit`] commits it (after writing the
    /// outbox). Store modules use it through [`with_tx!`].
    conn: TxConn,
    /// Events recorded in this transaction (`events::record`). [`Tx::commit`] writes them as
    /// the transaction's last statement; a dropped `Tx` rolls back and forgets them.
    outbox: Vec<OutboxRow>,
    /// What this transaction changed, for the device cache: sent to other instances inside
    /// the transaction and applied here after the commit ([`Tx::touch`]).
    touches: Vec<Touch>,
    /// Touches that only this instance's cache needs ([`Tx::touch_here`]).
    touches_here: Vec<Touch>,
    cache: Arc<DeviceCache>,
    origin: Arc<str>,
}

/// The engine-specific transaction inside a [`Tx`].
enum TxConn {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// One event row waiting in a [`Tx`] for its commit.
#[derive(Debug, Clone)]
struct OutboxRow {
    id: EventId,
    tenant_id: TenantId,
    event_type: &'static str,
    occurred_at: i64,
    /// The event's `data`, as JSON text.
    data: String,
}

/// The most events [`Tx::commit`] writes with the one-statement outbox (5 parameters a row).
const OUTBOX_STATEMENT_ROWS: usize = 1000;

impl Tx {
    /// PostgreSQL, one tenant's events: takes the event-order lock, bumps the tenant's counter by
    /// the number of rows and inserts them numbered from it, in a single statement. The lock is
    /// taken first because the counter's upsert reads from the `lock` CTE and the insert reads
    /// from the counter's `RETURNING`.
    async fn write_outbox_in_one_statement(&mut self, outbox: &[OutboxRow]) -> Result<(), StoreError> {
        let Some(first) = outbox.first() else { return Ok(()) };
        let n = i64::try_from(outbox.len()).map_err(|_| StoreError::Other(sqlx::Error::RowNotFound))?;
        let values: Vec<String> = (0..outbox.len())
            .map(|i| {
                let b = 4 + 5 * i;
                format!("(${}, ${}::BIGINT, ${}, ${}, ${})", b, b + 1, b + 2, b + 3, b + 4)
            })
            .collect();
        let sql = format!(
            "WITH lock AS (SELECT pg_advisory_xact_lock($1)), \
             counter AS (INSERT INTO event_counters (tenant_id, seq) SELECT $2, $3 FROM lock \
                ON CONFLICT (tenant_id) DO UPDATE SET seq = event_counters.seq + excluded.seq RETURNING seq) \
             INSERT INTO events (id, tenant_id, tenant_seq, type, occurred_at, data) \
             SELECT v.id, $2, counter.seq - $3 + v.ord, v.type, v.occurred_at, v.data \
             FROM counter, (VALUES {}) AS v (id, ord, type, occurred_at, data)",
            values.join(", ")
        );
        let TxConn::Postgres(tx) = &mut self.conn else { return Ok(()) };
        let mut query = sqlx::query(&sql).bind(EVENT_ORDER_LOCK).bind(first.tenant_id).bind(n);
        for (ord, row) in (1_i64..).zip(outbox) {
            query = query.bind(row.id).bind(ord).bind(row.event_type).bind(row.occurred_at).bind(&row.data);
        }
        query.execute(&mut **tx).await.map_err(classify)?;
        Ok(())
    }
}

/// Touches a device cache when dropped (see [`Tx::commit`]).
struct TouchOnDrop {
    cache: Arc<DeviceCache>,
    touches: Vec<Touch>,
}

impl Drop for TouchOnDrop {
    fn drop(&mut self) {
        for touch in &self.touches {
            self.cache.touch(*touch);
        }
    }
}

/// Each SQLite reader connection's page cache, as `PRAGMA cache_size` (negative: KiB). The
/// writer keeps 32 MiB; four readers at 32 MiB each held up to 128 MiB of pages that the
/// kernel's page cache holds too, since every reader that scanned the device table (a console
/// search) kept its own copy of it.
const READER_CACHE_KIB: &str = "-8192";

/// The advisory lock that orders event writers on PostgreSQL ("herdevts").
const EVENT_ORDER_LOCK: i64 = 0x6865_7264_6576_7473;

/// What can go wrong in a store, classified so that callers can answer 409 or 404 precisely.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique constraint failed; the text names the constraint or columns on both engines.
    #[error("unique constraint violated: {0}")]
    Unique(String),
    #[error("database error: {0}")]
    Other(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// True if a stored value could not be decoded into its domain type (an unknown status, a
    /// malformed id or JSON document): the row is unreadable, not the database.
    pub fn is_decode(&self) -> bool {
        matches!(self, StoreError::Other(sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_)))
    }

    /// True if a unique constraint whose name or column list contains `needle` failed.
    pub fn is_unique_on(&self, needle: &str) -> bool {
        matches!(self, StoreError::Unique(text) if text.contains(needle))
    }
}

/// Converts a driver error, recognising unique violations on both engines.
pub(crate) fn classify(error: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db_error) = &error {
        if db_error.is_unique_violation() {
            let text = match db_error.constraint() {
                Some(name) => name.to_string(),
                None => db_error.message().to_string(),
            };
            return StoreError::Unique(text);
        }
    }
    StoreError::Other(error)
}

/// Runs `$body` with `$conn` bound to a pool that may write.
macro_rules! with_writer {
    ($db:expr, |$conn:ident| $body:expr) => {
        match &($db).pools {
            $crate::Pools::Sqlite { writer, .. } => {
                let $conn = writer;
                $body
            }
            $crate::Pools::Postgres(pool) => {
                let $conn = pool;
                $body
            }
        }
    };
}

/// One column of a PostgreSQL multi-row write as an array (`UNNEST($n::TYPE[])`): the value
/// `f` gives for each row.
pub(crate) fn column<T, V>(rows: &[T], f: impl Fn(&T) -> V) -> Vec<V> {
    rows.iter().map(f).collect()
}

/// Runs `$body` with `$conn` bound to a pool for reads.
macro_rules! with_reader {
    ($db:expr, |$conn:ident| $body:expr) => {
        match &($db).pools {
            $crate::Pools::Sqlite { reader, .. } => {
                let $conn = reader;
                $body
            }
            $crate::Pools::Postgres(pool) => {
                let $conn = pool;
                $body
            }
        }
    };
}

/// Runs `$body` with `$conn` bound to the connection of an open [`Tx`]; use `&mut *$conn`
/// as the executor of each query.
macro_rules! with_tx {
    ($tx:expr, |$conn:ident| $body:expr) => {
        match &mut ($tx).conn {
            $crate::TxConn::Sqlite(tx) => {
                let $conn: &mut sqlx::SqliteConnection = &mut *tx;
                $body
            }
            $crate::TxConn::Postgres(tx) => {
                let $conn: &mut sqlx::PgConnection = &mut *tx;
                $body
            }
        }
    };
}

pub(crate) use {with_reader, with_tx, with_writer};

/// One connection pool's state at a moment ([`Db::pool_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// `writer`, `reader` (SQLite) or `postgres`.
    pub name: &'static str,
    /// Connections open, idle or in use.
    pub open: u32,
    /// Open connections not in use.
    pub idle: usize,
    /// The most the pool opens.
    pub max: u32,
}

impl Db {
    /// Opens the database named by `url` (creating an SQLite file and its directory if
    /// needed), and hands out the [`System`] principal with it: jobs and CLI commands act for
    /// tenants through it, and no other code path can make one.
    pub async fn open(url: &str) -> Result<(Db, System), StoreError> {
        let db = Self::connect(url).await?;
        Ok((db, System::new()))
    }

    async fn connect(url: &str) -> Result<Db, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(24)
                .min_connections(1)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await?;
            return Ok(Db::new(Pools::Postgres(pool)));
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-32768")
            // A checkpoint every 10,000 WAL pages (~40 MiB) rather than SQLite's 1,000: a
            // page that several commits rewrite (a busy index's last page, a row the sweep
            // and the heartbeats both write) is copied back once per checkpoint, and a commit
            // pays a checkpoint a tenth as often. The sweep of 1,000,000 devices replayed on
            // the real schema took 33.2 s against 37.5 s (BENCHMARKS.md, "The SQLite WAL's
            // checkpoints"). After a checkpoint empties it, the WAL file is cut back to 64 MiB,
            // so one large sweep does not leave a file of its size behind.
            .pragma("wal_autocheckpoint", "10000")
            .pragma("journal_size_limit", "67108864");
        if let Some(parent) = Path::new(options.get_filename()).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::Other(sqlx::Error::Io(e)))?;
            }
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.create_if_missing(false).pragma("cache_size", READER_CACHE_KIB))
            .await?;
        Ok(Db::new(Pools::Sqlite { writer, reader }))
    }

    /// The cache starts off; [`Db::with_device_cache`] turns it on for a serving instance.
    fn new(pools: Pools) -> Db {
        Db {
            samples: samples::SampleQueue::start(pools.clone()),
            issues: Arc::new(certificates::issue_group()),
            arrivals: Arc::new(arrivals::arrival_group()),
            registrations: Arc::new(registrations::registration_group()),
            pools,
            cache: Arc::new(DeviceCache::new(0, true)),
            origin: uuid::Uuid::new_v4().simple().to_string().into(),
        }
    }

    /// This handle with a device credential cache of `capacity` entries (0: none), for the
    /// serving process (see [`cache`]). On SQLite it answers at once, as this process makes
    /// every write; on PostgreSQL only once [`Db::follow_other_instances`] listens.
    pub fn with_device_cache(mut self, capacity: usize) -> Db {
        self.cache = Arc::new(DeviceCache::new(capacity, self.engine() == Engine::Sqlite));
        self
    }

    /// The device cache's lookups and size (for `/metrics`).
    pub fn device_cache_stats(&self) -> cache::CacheStats {
        self.cache.stats()
    }

    /// Applies another instance's notification on [`cache::CHANNEL`].
    pub fn apply_cache_notification(&self, payload: &str) {
        for touch in cache::parse_payload(&self.origin, payload) {
            self.cache.touch(touch);
        }
    }

    /// Says whether this instance receives other instances' cache notifications (see
    /// [`cache`]): the cache answers only while it does.
    pub fn follow_other_instances(&self, following: bool) {
        self.cache.follow(following);
    }

    /// Connections of each pool, for the `/metrics` scrape: (`writer`, `reader`) on SQLite,
    /// (`postgres`) on PostgreSQL.
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        fn stats<DB: sqlx::Database>(name: &'static str, pool: &sqlx::Pool<DB>) -> PoolStats {
            PoolStats { name, open: pool.size(), idle: pool.num_idle(), max: pool.options().get_max_connections() }
        }
        match &self.pools {
            Pools::Sqlite { writer, reader } => vec![stats("writer", writer), stats("reader", reader)],
            Pools::Postgres(pool) => vec![stats("postgres", pool)],
        }
    }

    pub fn engine(&self) -> Engine {
        match &self.pools {
            Pools::Sqlite { .. } => Engine::Sqlite,
            Pools::Postgres(_) => Engine::Postgres,
        }
    }

    /// Applies the engine's migrations (`migrations/sqlite` or `migrations/postgres`).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.pools {
            Pools::Sqlite { writer, .. } => sqlx::migrate!("./migrations/sqlite").run(writer).await?,
            Pools::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Applies the engine's migrations up to and including `last` only: a test writes the
    /// state an older herd left, then [`Db::migrate`] applies the rest.
    #[cfg(test)]
    pub(crate) async fn migrate_to(&self, last: i64) -> Result<(), StoreError> {
        fn up_to(mut migrator: sqlx::migrate::Migrator, last: i64) -> sqlx::migrate::Migrator {
            migrator.migrations =
                migrator.migrations.iter().filter(|m| m.version <= last).cloned().collect::<Vec<_>>().into();
            migrator
        }
        match &self.pools {
            Pools::Sqlite { writer, .. } => up_to(sqlx::migrate!("./migrations/sqlite"), last).run(writer).await?,
            Pools::Postgres(pool) => up_to(sqlx::migrate!("./migrations/postgres"), last).run(pool).await?,
        }
        Ok(())
    }

    /// True if the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        with_reader!(self, |pool| sqlx::query("SELECT 1").execute(pool).await.is_ok())
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        let conn = match &self.pools {
            Pools::Sqlite { writer, .. } => TxConn::Sqlite(writer.begin().await?),
            Pools::Postgres(pool) => TxConn::Postgres(pool.begin().await?),
        };
        Ok(Tx {
            conn,
            outbox: Vec::new(),
            touches: Vec::new(),
            touches_here: Vec::new(),
            cache: self.cache.clone(),
            origin: self.origin.clone(),
        })
    }

    /// Closes every connection (waits for checked-out ones to come back).
    pub async fn close(&self) {
        match &self.pools {
            Pools::Sqlite { writer, reader } => {
                reader.close().await;
                writer.close().await;
            }
            Pools::Postgres(pool) => pool.close().await,
        }
    }
}

impl Tx {
    /// Records `event` for `tenant_id`: it is written when the transaction commits, as its
    /// last statement (see [`Tx::commit`] for why that keeps `seq` order equal to commit
    /// order), and never if the transaction rolls back.
    pub fn record(&mut self, tenant_id: TenantId, event: &Event, now: i64) -> EventId {
        let id = EventId::new();
        self.outbox.push(OutboxRow {
            id,
            tenant_id,
            event_type: event.type_name(),
            occurred_at: now,
            data: event.data().to_string(),
        });
        id
    }

    /// Notes that this transaction changes what the device cache may hold for `touch`: other
    /// instances learn it at the commit (PostgreSQL `NOTIFY` is transactional), this one right
    /// after it.
    pub(crate) fn touch(&mut self, touch: Touch) {
        self.touches.push(touch);
    }

    /// As [`Tx::touch`], for a change another instance's stale entry cannot misreport: this
    /// instance's cache is updated, others are not told (the caller says why it is safe).
    pub(crate) fn touch_here(&mut self, touch: Touch) {
        self.touches_here.push(touch);
    }

    /// Writes the recorded events, then commits.
    ///
    /// Events go last so that `seq` order is commit order: a sequence hands out numbers before
    /// commit, so a reader asking for `seq > N` could otherwise pass over an event whose
    /// transaction commits late. On PostgreSQL the outbox insert first takes a
    /// transaction-scoped advisory lock, so event writers commit one at a time in `seq` order;
    /// as it is the last statement, the lock is held for the insert and the commit only, and
    /// no row lock is ever awaited while holding it. SQLite has one writer already.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        let touches = std::mem::take(&mut self.touches);
        let mut local = TouchOnDrop { cache: self.cache.clone(), touches: touches.clone() };
        local.touches.append(&mut self.touches_here);
        // `local` touches when this future ends, however it ends: after the commit, after a
        // failed one (it may have committed before the error; a spurious touch costs a miss),
        // or dropped mid-commit by a cancelled request, when the commit may have happened.
        self.commit_touching(&touches).await
    }

    async fn commit_touching(mut self, touches: &[Touch]) -> Result<(), StoreError> {
        if let TxConn::Postgres(tx) = &mut self.conn {
            let payloads = cache::payloads(&self.origin, touches);
            if !payloads.is_empty() {
                sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::TEXT[]) AS p")
                    .bind(cache::CHANNEL)
                    .bind(payloads)
                    .execute(&mut **tx)
                    .await
                    .map_err(classify)?;
            }
        }
        let outbox = std::mem::take(&mut self.outbox);
        let single_tenant =
            outbox.first().is_some_and(|first| outbox.iter().all(|row| row.tenant_id == first.tenant_id));
        if matches!(self.conn, TxConn::Postgres(_)) && single_tenant && outbox.len() <= OUTBOX_STATEMENT_ROWS {
            // The common case on PostgreSQL in one round trip: the lock, the tenant's counter
            // and the rows are one statement, so the lock is held for it and the commit only.
            self.write_outbox_in_one_statement(&outbox).await?;
        } else if !outbox.is_empty() {
            if let TxConn::Postgres(tx) = &mut self.conn {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(EVENT_ORDER_LOCK)
                    .execute(&mut **tx)
                    .await
                    .map_err(classify)?;
            }
            // Each tenant's events are numbered by that tenant's own counter (`tenant_seq`, what
            // cursors and stream ids show), so no tenant can count another's events from gaps.
            // The counter row is bumped once per tenant and commit, under the same lock.
            let mut tenants: Vec<(TenantId, i64)> = Vec::new();
            for row in &outbox {
                match tenants.iter_mut().find(|(tenant, _)| *tenant == row.tenant_id) {
                    Some((_, n)) => *n += 1,
                    None => tenants.push((row.tenant_id, 1)),
                }
            }
            let mut next: Vec<(TenantId, i64)> = Vec::with_capacity(tenants.len());
            for (tenant, n) in tenants {
                let (last,): (i64,) = with_tx!(&mut self, |conn| sqlx::query_as(
                    "INSERT INTO event_counters (tenant_id, seq) VALUES ($1, $2) \
                     ON CONFLICT (tenant_id) DO UPDATE SET seq = event_counters.seq + excluded.seq RETURNING seq"
                )
                .bind(tenant)
                .bind(n)
                .fetch_one(&mut *conn)
                .await)
                .map_err(classify)?;
                next.push((tenant, last - n + 1));
            }
            let mut numbered: Vec<(i64, &OutboxRow)> = Vec::with_capacity(outbox.len());
            for row in &outbox {
                // Every row's tenant is in `next` (built from these rows above).
                if let Some((_, seq)) = next.iter_mut().find(|(tenant, _)| *tenant == row.tenant_id) {
                    numbered.push((*seq, row));
                    *seq += 1;
                }
            }
            // Six parameters a row keeps a chunk well under SQLite's 32,766-parameter limit.
            // SQLite gets anonymous `?` placeholders, bound in order: sqlx binds a statement by
            // asking SQLite each parameter's name, a linear search over the statement's names, so
            // 6,000 numbered `$N` cost ~18M steps per chunk (two thirds of a 100,000-device
            // sweep's time, BENCHMARKS.md); unnamed ones have no name to search for.
            let sqlite = matches!(self.conn, TxConn::Sqlite(_));
            for chunk in numbered.chunks(1000) {
                let rows: Vec<String> = (0..chunk.len())
                    .map(|i| {
                        let b = 6 * i;
                        if sqlite {
                            "(?, ?, ?, ?, ?, ?)".to_string()
                        } else {
                            format!("(${}, ${}, ${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6)
                        }
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO events (id, tenant_id, tenant_seq, type, occurred_at, data) VALUES {}",
                    rows.join(", ")
                );
                with_tx!(&mut self, |conn| {
                    let mut query = sqlx::query(&sql);
                    for (tenant_seq, row) in chunk {
                        query = query
                            .bind(row.id)
                            .bind(row.tenant_id)
                            .bind(*tenant_seq)
                            .bind(row.event_type)
                            .bind(row.occurred_at)
                            .bind(&row.data);
                    }
                    query.execute(&mut *conn).await.map(|r| r.rows_affected())
                })
                .map_err(classify)?;
            }
        }
        match self.conn {
            TxConn::Sqlite(tx) => tx.commit().await?,
            TxConn::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::test_db;

    /// The SQLite connections open with the page caches and WAL settings `Db::connect` names:
    /// a pragma that sqlx dropped or a later option that overrode it would leave SQLite's
    /// defaults (2 MiB caches, checkpoints every 1,000 pages) in place without a sign.
    #[tokio::test]
    async fn sqlite_connections_open_with_their_pragmas() {
        let test = test_db::sqlite().await;
        let db = &test.db;
        let pragma = |name: &'static str| async move {
            let sql = format!("PRAGMA {name}");
            let reader: i64 = with_reader!(db, |pool| sqlx::query_scalar(&sql).fetch_one(pool).await).unwrap();
            let writer: i64 = with_writer!(db, |pool| sqlx::query_scalar(&sql).fetch_one(pool).await).unwrap();
            (reader, writer)
        };
        assert_eq!(pragma("cache_size").await, (-8192, -32768));
        assert_eq!(pragma("wal_autocheckpoint").await.1, 10_000);
        assert_eq!(pragma("journal_size_limit").await.1, 64 << 20);
    }
}
