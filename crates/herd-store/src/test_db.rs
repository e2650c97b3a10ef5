//! Fresh, migrated databases for the store's own unit tests, on either engine.
//!
//! PostgreSQL runs when `HERD_TEST_DATABASE_URL` is set (as the API suite does): a database of
//! its own, dropped afterwards. Unset, a local run skips it with a message but a CI run (`CI`
//! set) panics, so a pipeline that lost the variable fails rather than passing on SQLite alone.

use herd_domain::ids::TenantId;
use sqlx::Connection;

use crate::{with_writer, Db};

/// A migrated database and what keeps it alive (its directory or its PostgreSQL database).
pub(crate) struct TestDb {
    pub(crate) db: Db,
    _sqlite_dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

pub(crate) async fn sqlite() -> TestDb {
    sqlite_migrated_to(None).await
}

/// [`sqlite`] with the migrations up to `last` only (all with `None`).
pub(crate) async fn sqlite_migrated_to(last: Option<i64>) -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("herd.db").display());
    let (db, _system) = Db::open(&url).await.unwrap();
    migrate(&db, last).await;
    TestDb { db, _sqlite_dir: Some(dir), postgres: None }
}

async fn migrate(db: &Db, last: Option<i64>) {
    match last {
        Some(last) => db.migrate_to(last).await.unwrap(),
        None => db.migrate().await.unwrap(),
    }
}

/// None (with a message) when `HERD_TEST_DATABASE_URL` is unset outside CI.
pub(crate) async fn postgres() -> Option<TestDb> {
    postgres_migrated_to(None).await
}

/// [`postgres`] with the migrations up to `last` only (all with `None`).
pub(crate) async fn postgres_migrated_to(last: Option<i64>) -> Option<TestDb> {
    let admin_url = match std::env::var("HERD_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(
                std::env::var("CI").map(|v| v.is_empty()).unwrap_or(true),
                "CI is set but HERD_TEST_DATABASE_URL is not: the PostgreSQL variants must run in CI"
            );
            eprintln!("HERD_TEST_DATABASE_URL is not set: PostgreSQL variant not run");
            return None;
        }
    };
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("HERD_TEST_DATABASE_URL is set but PostgreSQL is unreachable: {e}"));
    let name = format!("herd_store_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut admin).await.unwrap();
    let base = admin_url.split('?').next().unwrap_or(&admin_url);
    let url = match base.rfind('/') {
        Some(slash) if slash > "postgres://".len() => format!("{}/{name}", &base[..slash]),
        _ => format!("{base}/{name}"),
    };
    let (db, _system) = Db::open(&url).await.unwrap();
    migrate(&db, last).await;
    Some(TestDb { db, _sqlite_dir: None, postgres: Some((admin_url, name)) })
}

/// A new tenant row (no tokens or users): what a store test needs to own rows.
pub(crate) async fn tenant(db: &Db) -> TenantId {
    let tenant = TenantId::new();
    let sql = "INSERT INTO tenants (id, name, created_at) VALUES ($1, $1, 0)";
    with_writer!(db, |pool| sqlx::query(sql).bind(tenant).execute(pool).await.map(drop)).unwrap();
    tenant
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else { return };
        // Drop runs inside the test's runtime, so the cleanup gets a runtime of its own.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}
