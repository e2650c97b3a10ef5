//! SQL for `herd backup` and `herd restore`: an online consistent copy of an SQLite database,
//! the schema version a database is at and the one this build knows, whether a database is
//! empty, and one sealed private key to prove a key-encryption key against.
//!
//! Nothing here writes to a live database: a backup runs beside a serving instance. PostgreSQL
//! is copied by `pg_dump`, outside this crate.

use std::path::Path;

use crate::{classify, with_reader, Db, Engine, StoreError};

/// Writes a transactionally consistent copy of the SQLite database to `path` (`VACUUM INTO`),
/// on a reader connection: in WAL mode the copy reads one snapshot while the serving instance
/// keeps writing, and the writer is never blocked. `path` must not exist. Refused on
/// PostgreSQL, which is copied with `pg_dump`.
pub async fn snapshot_sqlite_into(db: &Db, path: &Path) -> Result<(), StoreError> {
    let Some(path) = path.to_str() else {
        return Err(StoreError::Other(sqlx::Error::Protocol("the snapshot path is not UTF-8".into())));
    };
    match db.engine() {
        Engine::Sqlite => {
            with_reader!(db, |pool| sqlx::query("VACUUM INTO $1").bind(path).execute(pool).await.map(|_| ()))
                .map_err(classify)
        }
        Engine::Postgres => {
            Err(StoreError::Other(sqlx::Error::Protocol("an SQLite snapshot of a PostgreSQL database".into())))
        }
    }
}

/// The newest migration applied to the database, `None` when it has none (a fresh database).
pub async fn schema_version(db: &Db) -> Result<Option<i64>, StoreError> {
    if !has_table(db, "_sqlx_migrations").await? {
        return Ok(None);
    }
    with_reader!(db, |pool| sqlx::query_scalar::<_, Option<i64>>(
        "SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE"
    )
    .fetch_one(pool)
    .await)
    .map_err(classify)
}

/// The newest migration this build carries for `engine`: a backup taken at a higher version
/// comes from a newer herd and cannot be restored by this one.
pub fn known_schema_version(engine: Engine) -> i64 {
    let migrator = match engine {
        Engine::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        Engine::Postgres => sqlx::migrate!("./migrations/postgres"),
    };
    migrator.iter().map(|migration| migration.version).max().unwrap_or(0)
}

/// True when the database holds no table of its own (a fresh database to restore into).
pub async fn is_empty(db: &Db) -> Result<bool, StoreError> {
    let tables: i64 = match db.engine() {
        Engine::Sqlite => with_reader!(db, |pool| sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        .fetch_one(pool)
        .await),
        Engine::Postgres => with_reader!(db, |pool| sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        .fetch_one(pool)
        .await),
    }
    .map_err(classify)?;
    Ok(tables == 0)
}

/// One private key sealed under the key-encryption key: `(certificate id, base64 sealed key)`,
/// the newest, or `None` when no key is stored in the database. Restore opens it with the
/// backed-up key to prove that key belongs to this database.
pub async fn sealed_key_sample(db: &Db) -> Result<Option<(String, String)>, StoreError> {
    if !has_table(db, "certificates").await? {
        return Ok(None);
    }
    with_reader!(db, |pool| sqlx::query_as::<_, (String, String)>(
        "SELECT id, private_key_sealed FROM certificates \
         WHERE key_storage = 'database' AND private_key_sealed IS NOT NULL ORDER BY id DESC LIMIT 1"
    )
    .fetch_optional(pool)
    .await)
    .map_err(classify)
}

async fn has_table(db: &Db, name: &str) -> Result<bool, StoreError> {
    let n: i64 = match db.engine() {
        Engine::Sqlite => with_reader!(db, |pool| sqlx::query_scalar(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1"
        )
        .bind(name)
        .fetch_one(pool)
        .await),
        Engine::Postgres => with_reader!(db, |pool| {
            sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1"
        )
        .bind(name)
        .fetch_one(pool)
        .await
        }),
    }
    .map_err(classify)?;
    Ok(n > 0)
}
