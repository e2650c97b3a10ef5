//! `spawn_app` and `TestApp`: a real herd server on port 0 with a fresh database, a manual
//! clock, and typed helpers for the calls tests make again and again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use herd::app::App;
use herd::clock::ManualClock;
use herd::config::Settings;
use herd::shutdown::CancellationToken;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::Connection;

/// The storage engine a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    Sqlite,
    Postgres,
}

/// The bootstrap (platform admin + `default` tenant admin) token of every test app.
pub(crate) const ADMIN_TOKEN: &str = "test-bootstrap-token-0123456789abcdef";

/// Generates one `#[tokio::test]` per engine for each listed test:
/// `sqlite::NAME` always, `postgres::NAME` on a fresh PostgreSQL database when
/// `HERD_TEST_DATABASE_URL` is set (it fails, not skips, if that server is unreachable; under CI
/// it fails when the variable is missing, see [`postgres_variant_runs`]).
macro_rules! engine_tests {
    ($(async fn $name:ident($app:ident) $body:block)*) => {
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $app = crate::helpers::spawn_app(crate::helpers::Engine::Sqlite).await;
                    $body
                }
            )*
        }
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if !crate::helpers::postgres_variant_runs() {
                        return;
                    }
                    let $app = crate::helpers::spawn_app(crate::helpers::Engine::Postgres).await;
                    $body
                }
            )*
        }
    };
}
pub(crate) use engine_tests;

pub(crate) fn postgres_configured() -> bool {
    std::env::var("HERD_TEST_DATABASE_URL").map(|v| !v.is_empty()).unwrap_or(false)
}

/// The gate of every PostgreSQL variant: true when `HERD_TEST_DATABASE_URL` is set. Without it
/// a local run skips the variant with a message, but a CI run (`CI` set and non-empty) panics:
/// a pipeline that lost the variable must fail, not pass on SQLite alone.
pub(crate) fn postgres_variant_runs() -> bool {
    if postgres_configured() {
        return true;
    }
    if std::env::var("CI").map(|v| !v.is_empty()).unwrap_or(false) {
        panic!(
            "CI is set but HERD_TEST_DATABASE_URL is not: the PostgreSQL variants must run in CI \
             (set it, e.g. postgres://postgres@127.0.0.1:5432/test)"
        );
    }
    eprintln!("HERD_TEST_DATABASE_URL is not set: PostgreSQL variant not run");
    false
}

/// A test's own connection to an app's database (see [`TestApp::raw`]). Statements bind text
/// parameters only, which is all the tests need (ids are text on both engines).
pub(crate) enum RawConn {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

macro_rules! on_raw {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            RawConn::Sqlite($c) => $body,
            RawConn::Postgres($c) => $body,
        }
    };
}

impl RawConn {
    /// Runs a statement; answers the rows it affected.
    pub(crate) async fn execute(&mut self, sql: &str, binds: &[&str]) -> u64 {
        on_raw!(self, |conn| {
            let mut query = sqlx::query(sql);
            for bind in binds {
                query = query.bind(*bind);
            }
            query.execute(&mut *conn).await.map(|r| r.rows_affected()).unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
    }

    /// The one integer a query answers.
    pub(crate) async fn scalar_i64(&mut self, sql: &str, binds: &[&str]) -> i64 {
        on_raw!(self, |conn| {
            let mut query = sqlx::query_scalar::<_, i64>(sql);
            for bind in binds {
                query = query.bind(*bind);
            }
            query.fetch_one(&mut *conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
    }

    /// The one text a query answers.
    pub(crate) async fn scalar_text(&mut self, sql: &str, binds: &[&str]) -> String {
        on_raw!(self, |conn| {
            let mut query = sqlx::query_scalar::<_, String>(sql);
            for bind in binds {
                query = query.bind(*bind);
            }
            query.fetch_one(&mut *conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
    }

    /// Opens a write transaction that takes its locks at once (`BEGIN IMMEDIATE` on SQLite, so
    /// the app's writer waits for it as it would for another instance).
    pub(crate) async fn begin_write(&mut self) {
        let begin = match self {
            RawConn::Sqlite(_) => "BEGIN IMMEDIATE",
            RawConn::Postgres(_) => "BEGIN",
        };
        self.execute(begin, &[]).await;
    }

    /// Rolls back the open transaction (releasing its locks) and closes the connection.
    pub(crate) async fn rollback(mut self) {
        self.execute("ROLLBACK", &[]).await;
        self.close().await;
    }

    pub(crate) async fn close(self) {
        on_raw!(self, |conn| conn.close().await.expect("close"))
    }
}

/// Options of a test app.
pub(crate) struct SpawnOptions {
    pub bootstrap_token: Option<String>,
    pub adjust: Box<dyn FnOnce(&mut Settings) + Send>,
}

impl Default for SpawnOptions {
    fn default() -> Self {
        Self { bootstrap_token: Some(ADMIN_TOKEN.into()), adjust: Box::new(|_| {}) }
    }
}

/// A running server and what a test needs to talk to it.
pub(crate) struct TestApp {
    pub engine: Engine,
    pub address: SocketAddr,
    pub client: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub settings: Settings,
    /// The running app's state, for calling job steps (sweeps, deliveries) directly.
    pub state: herd::app::AppState,
    /// Keeps the data directory alive for the test's lifetime.
    _data_dir: Arc<tempfile::TempDir>,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// The per-test PostgreSQL database, dropped with the app.
    postgres: Option<PostgresDatabase>,
}

/// A fresh PostgreSQL database on the `HERD_TEST_DATABASE_URL` server, dropped with this value.
pub(crate) struct PostgresDatabase {
    admin_url: String,
    name: String,
}

impl PostgresDatabase {
    /// The URL of this database.
    pub(crate) fn url(&self) -> String {
        database_url(&self.admin_url, &self.name)
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
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

pub(crate) async fn spawn_app(engine: Engine) -> TestApp {
    spawn_app_with(engine, SpawnOptions::default()).await
}

pub(crate) async fn spawn_app_with(engine: Engine, options: SpawnOptions) -> TestApp {
    // `HERD_TEST_LOG=herd=debug` shows the server's log (e.g. the cause of a 500) in a test's output.
    if let Ok(filter) = std::env::var("HERD_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
    let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut settings = Settings::defaults_for(data_dir.path());
    settings.listen = "127.0.0.1:0".parse().expect("address");
    settings.bootstrap_token = options.bootstrap_token.map(Into::into);
    let postgres = match engine {
        Engine::Sqlite => None,
        Engine::Postgres => {
            let database = create_postgres_database().await;
            settings.database_url = database.url().into();
            Some(database)
        }
    };
    (options.adjust)(&mut settings);
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).single().expect("time")));
    start(engine, settings, clock, data_dir, postgres).await
}

pub(crate) async fn start(
    engine: Engine,
    settings: Settings,
    clock: Arc<ManualClock>,
    data_dir: Arc<tempfile::TempDir>,
    postgres: Option<PostgresDatabase>,
) -> TestApp {
    let app = App::build_with_clock(settings.clone(), clock.clone()).await.expect("the app builds");
    let address = app.local_addr();
    let shutdown = app.shutdown_token();
    let state = app.state().clone();
    let server = tokio::spawn(app.run_until_stopped());
    TestApp {
        engine,
        address,
        client: reqwest::Client::new(),
        clock,
        settings,
        state,
        _data_dir: data_dir,
        shutdown,
        server: Some(server),
        postgres,
    }
}

/// Creates a fresh database; panics if `HERD_TEST_DATABASE_URL` is missing or unreachable.
pub(crate) async fn create_postgres_database() -> PostgresDatabase {
    let admin_url = std::env::var("HERD_TEST_DATABASE_URL").expect("HERD_TEST_DATABASE_URL");
    let mut conn = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("HERD_TEST_DATABASE_URL is set but PostgreSQL is unreachable: {e}"));
    let name = format!("herd_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).await.expect("create database");
    PostgresDatabase { admin_url, name }
}

fn database_url(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (admin_url, None),
    };
    let prefix = match base.rfind('/') {
        Some(slash) if slash > "postgres://".len() => &base[..slash],
        _ => base,
    };
    match query {
        Some(query) => format!("{prefix}/{name}?{query}"),
        None => format!("{prefix}/{name}"),
    }
}

impl TestApp {
    /// A connection of the test's own to the app's database. The app's `Db` runs no SQL from
    /// outside the store crate (on purpose), so tests that inspect rows or hold locks bring
    /// their own connection.
    pub(crate) async fn raw(&self) -> RawConn {
        let url = &self.settings.database_url;
        match self.engine {
            Engine::Sqlite => RawConn::Sqlite(sqlx::SqliteConnection::connect(url).await.expect("sqlite connection")),
            Engine::Postgres => RawConn::Postgres(sqlx::PgConnection::connect(url).await.expect("postgres connection")),
        }
    }

    /// Runs one statement on the app's database over a connection of the test's own.
    pub(crate) async fn execute_sql(&self, statement: &str) {
        let mut conn = self.raw().await;
        conn.execute(statement, &[]).await;
        conn.close().await;
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self._data_dir.path().to_path_buf()
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request sent")
    }

    pub(crate) async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub(crate) async fn post(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        self.request(Method::POST, path, Some(token), Some(body)).await
    }

    pub(crate) async fn patch(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        self.request(Method::PATCH, path, Some(token), Some(body)).await
    }

    pub(crate) async fn delete(&self, path: &str, token: &str) -> reqwest::Response {
        self.request(Method::DELETE, path, Some(token), None).await
    }

    /// A new tenant; answers `(tenant id, admin token)`.
    pub(crate) async fn create_tenant(&self, name: &str) -> (String, String) {
        let response = self.post("/tenants", ADMIN_TOKEN, json!({ "name": name })).await;
        let body = expect_json(response, StatusCode::CREATED).await;
        (
            body["tenant"]["id"].as_str().expect("id").to_string(),
            body["adminToken"].as_str().expect("token").to_string(),
        )
    }

    /// A new enrollment token of the admin's tenant; answers its secret.
    pub(crate) async fn enrollment_token(&self, admin: &str, body: Value) -> String {
        let response = self.post("/enrollment-tokens", admin, body).await;
        let body = expect_json(response, StatusCode::CREATED).await;
        body["secret"].as_str().expect("secret").to_string()
    }

    /// Auto-registers a device; answers `(device, device token)`.
    pub(crate) async fn register(&self, enroller: &str, body: Value) -> (Value, String) {
        let response = self.post("/devices/auto-register", enroller, body).await;
        let status = response.status();
        assert!(status == StatusCode::CREATED || status == StatusCode::OK, "auto-register answered {status}");
        let body: Value = response.json().await.expect("json");
        (body["device"].clone(), body["deviceToken"].as_str().expect("token").to_string())
    }

    /// An API token with a role in the admin's tenant.
    pub(crate) async fn api_token(&self, admin: &str, role: &str) -> String {
        let response = self.post("/tokens", admin, json!({ "name": format!("{role} token"), "role": role })).await;
        expect_json(response, StatusCode::CREATED).await["secret"].as_str().expect("secret").to_string()
    }

    /// Another herd instance on the same database and clock (several instances behind a load
    /// balancer). The first instance keeps ownership of the test database.
    pub(crate) async fn second_instance(&self) -> TestApp {
        let mut settings = self.settings.clone();
        settings.listen = "127.0.0.1:0".parse().expect("address");
        start(self.engine, settings, self.clock.clone(), self._data_dir.clone(), None).await
    }

    /// Stops the server gracefully and starts a new one on the same data directory and database.
    pub(crate) async fn restart(mut self) -> TestApp {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server stopped cleanly");
        }
        let mut settings = self.settings.clone();
        settings.listen = "127.0.0.1:0".parse().expect("address");
        let (engine, clock, data_dir, postgres) =
            (self.engine, self.clock.clone(), self._data_dir.clone(), self.postgres.take());
        start(engine, settings, clock, data_dir, postgres).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Asserts the status and returns the JSON body.
pub(crate) async fn expect_json(response: reqwest::Response, status: StatusCode) -> Value {
    let actual = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts a problem+json answer with this status and returns it.
pub(crate) async fn expect_problem(response: reqwest::Response, status: StatusCode) -> Value {
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = expect_json(response, status).await;
    assert_eq!(content_type, "application/problem+json", "{body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string(), "{body}");
    body
}

/// The fields named in a 422's `errors`.
pub(crate) fn error_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| errors.iter().filter_map(|e| e["field"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Reads the manual clock with an offset, for expiry times in request bodies.
pub(crate) trait ClockExt {
    fn now_plus(&self, offset: chrono::Duration) -> chrono::DateTime<Utc>;
}

impl ClockExt for ManualClock {
    fn now_plus(&self, offset: chrono::Duration) -> chrono::DateTime<Utc> {
        use herd::clock::Clock;
        self.now() + offset
    }
}
