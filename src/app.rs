//! Startup (after zero2prod's `startup.rs`): [`App::build`] opens the database, applies
//! migrations, bootstraps an empty installation and binds the listener; [`App::run_until_stopped`]
//! serves until the shutdown token is cancelled, then drains requests and stops the jobs.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::clock::{to_millis, Clock, SystemClock};
use crate::config::{Secret, Settings};
use crate::presence::HeartbeatBuffer;
use crate::shutdown::CancellationToken;
use crate::store::Db;
use crate::telemetry_metrics::HttpMetrics;
use crate::tenants::{self, Bootstrap};

/// The application's shared state. Cheap to clone. Handlers take the narrow part they need
/// (`State<Arc<dyn Clock>>`, `State<Arc<CertificateService>>`, …: each field is `FromRef`),
/// except `system`, which no handler can extract: only jobs act as the system principal.
#[derive(Clone, axum::extract::FromRef)]
pub struct AppState {
    /// The database. Tenant data is reached through `TenantScope`s made by the auth
    /// extractors, never by querying this handle with a tenant id from the request.
    pub db: Db,
    /// The system principal that opening the database handed out: jobs act through it.
    #[from_ref(skip)]
    pub system: Arc<herd_store::System>,
    pub settings: Arc<Settings>,
    /// The only source of "now" (tests substitute a manual clock).
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<HttpMetrics>,
    /// `lastSeen` advances waiting to be written (see `presence` for the durability contract).
    pub heartbeats: Arc<HeartbeatBuffer>,
    /// The CA, issuance, lifecycle and CRL (one per process; see `certificates`).
    pub certificates: Arc<crate::certificates::CertificateService>,
    /// Cancelled at shutdown; long-lived responses (event streams) end with it.
    pub shutdown: CancellationToken,
    /// The webhook deliveries' HTTP client (public targets only unless allowed, no redirects, no
    /// proxy, a timeout), built once at start-up.
    pub webhook_client: crate::webhooks::client::WebhookClient,
    /// Open event streams per token and per tenant, against their caps.
    pub event_streams: Arc<crate::events::stream::StreamLimits>,
    /// Bounds on `POST /auth/login`: hashing concurrency, rates and locks (see `auth::limits`).
    pub login_limits: Arc<crate::auth::limits::LoginLimits>,
    /// Devices whose command polls wait on this instance (see `commands::waiters`).
    pub command_waiters: Arc<crate::commands::waiters::Waiters>,
    /// Uploaded files (screenshots, packages): local files or an S3 bucket (see `blobs`).
    pub blobs: crate::blobs::BlobStore,
    /// Signs and checks package download links (key derived by the certificate service).
    pub(crate) download_signer: Arc<crate::packages::DownloadSigner>,
}

/// A built, not yet running, server.
pub struct App {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: AppState,
    shutdown: CancellationToken,
    bootstrap: Bootstrap,
}

impl App {
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        Self::build_with_clock(settings, Arc::new(SystemClock)).await
    }

    pub async fn build_with_clock(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<App> {
        crate::files::create_private_dir(&settings.data_dir)
            .with_context(|| format!("cannot create the data directory {}", settings.data_dir.display()))?;
        crate::files::secure_sqlite_files(&settings.database_url)?;
        let (db, system) = Db::open(&settings.database_url)
            .await
            .with_context(|| format!("cannot open the database {}", redact(&settings.database_url)))?;
        db.migrate().await.context("cannot apply database migrations")?;
        let db = db.with_device_cache(settings.device_cache_entries);
        let bootstrap = tenants::bootstrap(
            &db,
            &settings.data_dir,
            settings.bootstrap_token.as_ref().map(Secret::expose),
            to_millis(clock.now()),
        )
        .await
        .context("cannot bootstrap the platform admin")?;
        let certificates = crate::certificates::CertificateService::start(&db, &settings, to_millis(clock.now()))
            .await
            .context("cannot start the certificate authority")?;
        let webhook_client = crate::webhooks::client::WebhookClient::new(settings.webhook_allow_private)
            .context("cannot build the HTTP client for webhook deliveries")?;
        // The hash that unknown usernames are checked against, made now rather than by the
        // first login (which would make it on an async worker, while other logins wait).
        tokio::task::spawn_blocking(crate::auth::tokens::dummy_password_hash)
            .await
            .context("cannot compute the dummy password hash")?;
        let login_limits = Arc::new(crate::auth::limits::LoginLimits::new(settings.login.clone()));
        let blobs = crate::blobs::BlobStore::from_settings(&settings).context("cannot open the blob store")?;
        blobs.check().await.context("cannot use the blob store")?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        let local_addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let event_streams = Arc::new(crate::events::stream::StreamLimits::new(
            settings.event_streams_per_token,
            settings.event_streams_per_tenant,
        ));
        let download_signer = Arc::new(crate::packages::DownloadSigner::new(
            certificates.derive_key(crate::packages::DownloadSigner::PURPOSE),
            settings.download_url_ttl,
            settings.public_url.clone(),
        ));
        let state = AppState {
            db,
            system: Arc::new(system),
            settings: Arc::new(settings),
            clock,
            metrics: Arc::new(HttpMetrics::default()),
            heartbeats: Arc::new(HeartbeatBuffer::default()),
            certificates: Arc::new(certificates),
            shutdown: shutdown.clone(),
            webhook_client,
            event_streams,
            login_limits,
            command_waiters: Arc::default(),
            blobs,
            download_signer,
        };
        Ok(App { listener, local_addr, state, shutdown, bootstrap })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Cancel it to stop the server (the binary cancels it on SIGINT/SIGTERM).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// What the first start did, for the log.
    pub fn bootstrap(&self) -> &Bootstrap {
        &self.bootstrap
    }

    /// Serves until the shutdown token is cancelled; in-flight requests finish first.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let App { listener, state, shutdown, .. } = self;
        let router = crate::http::router(state.clone());
        let jobs = crate::jobs::spawn_all(&state, &shutdown);
        let stop = shutdown.clone();
        let limits = crate::http::serve::ConnectionLimits {
            header_read_timeout: state.settings.header_read_timeout,
            idle_timeout: state.settings.idle_timeout,
            max_connections: crate::http::serve::raise_open_file_limit(state.settings.max_connections),
        };
        let served = crate::http::serve::serve(listener, router, limits, stop).await.context("the HTTP server failed");
        shutdown.cancel();
        for job in jobs {
            let _ = job.await;
        }
        // The last heartbeats of this process are written before the pool closes.
        if let Err(error) = state.heartbeats.flush(&state.db, &state.system).await {
            tracing::error!(%error, "cannot write buffered heartbeats at shutdown");
        }
        state.db.close().await;
        served?;
        Ok(())
    }
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
