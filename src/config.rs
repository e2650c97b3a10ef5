//! Configuration: defaults, then an optional `herd.toml`, then `HERD_*` environment variables,
//! then command-line flags (each later source wins). The names are DESIGN.md's contract.
//!
//! This module only turns text into a validated [`Settings`]; it opens no files other than the
//! configuration file and touches no database.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

/// Every setting, as flags with `HERD_*` environment fallbacks. All optional: what is not given
/// here comes from `herd.toml` or the default.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// Configuration file (TOML; keys are the flag names with `_` for `-`).
    #[arg(long, env = "HERD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory (database, CA, keys, initial admin token).
    #[arg(long, env = "HERD_DATA_DIR", global = true)]
    pub data_dir: Option<String>,
    /// Database URL: `sqlite://PATH` or `postgres://…`. Default: `sqlite://<data-dir>/herd.db`.
    #[arg(long, env = "HERD_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "HERD_LISTEN", global = true)]
    pub listen: Option<String>,
    /// A device that has not reported for this long is offline (e.g. `5m`).
    #[arg(long, env = "HERD_PRESENCE_THRESHOLD", global = true)]
    pub presence_threshold: Option<String>,
    /// How often the presence sweep runs (e.g. `1m`).
    #[arg(long, env = "HERD_PRESENCE_SWEEP_INTERVAL", global = true)]
    pub presence_sweep_interval: Option<String>,
    /// Device certificate lifetime in days.
    #[arg(long, env = "HERD_CERT_VALIDITY_DAYS", global = true)]
    pub cert_validity_days: Option<String>,
    /// Days before expiry at which `certificate.expiring` is emitted.
    #[arg(long, env = "HERD_CERT_RENEWAL_WARNING_DAYS", global = true)]
    pub cert_renewal_warning_days: Option<String>,
    /// Days before expiry at which server-generated certificates are renewed.
    #[arg(long, env = "HERD_CERT_AUTO_RENEWAL_DAYS", global = true)]
    pub cert_auto_renewal_days: Option<String>,
    /// RSA modulus length of server-generated device keys.
    #[arg(long, env = "HERD_CERT_KEY_SIZE", global = true)]
    pub cert_key_size: Option<String>,
    /// How often the certificate monitor runs (e.g. `1h`).
    #[arg(long, env = "HERD_CERT_MONITOR_INTERVAL", global = true)]
    pub cert_monitor_interval: Option<String>,
    /// Subject organisation (O=) of device certificates.
    #[arg(long, env = "HERD_CERT_ORGANIZATION", global = true)]
    pub cert_organization: Option<String>,
    /// Subject country (C=) of device certificates.
    #[arg(long, env = "HERD_CERT_COUNTRY", global = true)]
    pub cert_country: Option<String>,
    /// Where certificates and keys live: `file` or `database`.
    #[arg(long, env = "HERD_CERT_STORE", global = true)]
    pub cert_store: Option<String>,
    /// Public base URL (CRL distribution point, links).
    #[arg(long, env = "HERD_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,
    /// Key algorithm of a newly generated CA: `ecdsa-p256` (default), `rsa-2048`, `rsa-3072`, `rsa-4096`.
    #[arg(long, env = "HERD_CA_KEY_ALGORITHM", global = true)]
    pub ca_key_algorithm: Option<String>,
    /// How many server-generated RSA device keys are kept ready (0 generates each on demand).
    #[arg(long, env = "HERD_CERT_KEY_POOL_SIZE", global = true)]
    pub cert_key_pool_size: Option<String>,
    /// How long raw metric samples are kept (e.g. `30d`).
    #[arg(long, env = "HERD_METRICS_RETENTION", global = true)]
    pub metrics_retention: Option<String>,
    /// `pretty` or `json`. Default: pretty on a terminal, else json.
    #[arg(long, env = "HERD_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
    /// The platform admin token to create on first start (otherwise random, written to
    /// `<data-dir>/initial-admin-token`).
    #[arg(long, env = "HERD_BOOTSTRAP_TOKEN", global = true, hide_env_values = true)]
    pub bootstrap_token: Option<Secret>,
    /// Key-encryption key for private keys stored in the database (64 hex characters).
    #[arg(long, env = "HERD_KEY_ENCRYPTION_KEY", global = true, hide_env_values = true)]
    pub key_encryption_key: Option<Secret>,
    /// Bearer token that `GET /metrics` requires (unset: `/metrics` is public).
    #[arg(long, env = "HERD_METRICS_TOKEN", global = true, hide_env_values = true)]
    pub metrics_token: Option<Secret>,
    /// Longest time a request may take before it is answered 503 (e.g. `30s`).
    #[arg(long, env = "HERD_REQUEST_TIMEOUT", global = true)]
    pub request_timeout: Option<String>,
    /// Longest time an artifact upload or download (packages, screenshots) may take (e.g. `1h`).
    #[arg(long, env = "HERD_TRANSFER_TIMEOUT", global = true)]
    pub transfer_timeout: Option<String>,
    /// How long a signed package download URL stays valid (e.g. `15m`; 1m to 24h).
    #[arg(long, env = "HERD_DOWNLOAD_URL_TTL", global = true)]
    pub download_url_ttl: Option<String>,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "HERD_BODY_LIMIT", global = true)]
    pub body_limit: Option<String>,
    /// How long a login session lasts (e.g. `12h`).
    #[arg(long, env = "HERD_SESSION_TTL", global = true)]
    pub session_ttl: Option<String>,
    /// How often buffered heartbeats (`lastSeen` of online devices) are written (e.g. `1s`).
    #[arg(long, env = "HERD_HEARTBEAT_FLUSH_INTERVAL", global = true)]
    pub heartbeat_flush_interval: Option<String>,
    /// How long events are kept for `GET /events` and resumption (e.g. `7d`).
    #[arg(long, env = "HERD_EVENT_RETENTION", global = true)]
    pub event_retention: Option<String>,
    /// Allow webhook URLs on loopback and private networks (`true`/`false`).
    #[arg(long, env = "HERD_WEBHOOK_ALLOW_PRIVATE", global = true)]
    pub webhook_allow_private: Option<String>,
    /// How often due webhook deliveries are sent (e.g. `1s`).
    #[arg(long, env = "HERD_WEBHOOK_DELIVERY_INTERVAL", global = true)]
    pub webhook_delivery_interval: Option<String>,
    /// How often undelivered commands past `expiresAt` expire and overdue ones fail (e.g. `5s`).
    #[arg(long, env = "HERD_COMMAND_EXPIRY_INTERVAL", global = true)]
    pub command_expiry_interval: Option<String>,
    /// How often running rollouts advance: notify due devices, start soaked waves, pause on
    /// failures (e.g. `5s`).
    #[arg(long, env = "HERD_ROLLOUT_INTERVAL", global = true)]
    pub rollout_interval: Option<String>,
    /// Largest screenshot a device may upload as a command's result, in bytes.
    #[arg(long, env = "HERD_SCREENSHOT_MAX_BYTES", global = true)]
    pub screenshot_max_bytes: Option<String>,
    /// Largest software package an operator may upload, in bytes.
    #[arg(long, env = "HERD_PACKAGE_MAX_BYTES", global = true)]
    pub package_max_bytes: Option<String>,
    /// Serve `POST /bench/echo`, the benchmark harness's HTTP ceiling (`true`/`false`).
    #[arg(long, env = "HERD_BENCH_ECHO", global = true)]
    pub bench_echo: Option<String>,
    /// How often an open event stream re-checks its credential (e.g. `5s`).
    #[arg(long, env = "HERD_EVENT_STREAM_RECHECK_INTERVAL", global = true)]
    pub event_stream_recheck_interval: Option<String>,
    /// Most event streams one token may hold open at once.
    #[arg(long, env = "HERD_EVENT_STREAMS_PER_TOKEN", global = true)]
    pub event_streams_per_token: Option<String>,
    /// Most event streams one tenant may hold open at once (on this instance).
    #[arg(long, env = "HERD_EVENT_STREAMS_PER_TENANT", global = true)]
    pub event_streams_per_tenant: Option<String>,
    /// Longest time a client may take to send a request's headers, and to start the next
    /// request on a kept-alive connection (e.g. `10s`).
    #[arg(long, env = "HERD_HEADER_READ_TIMEOUT", global = true)]
    pub header_read_timeout: Option<String>,
    /// A connection on which no byte moves either way for this long is closed (e.g. `60s`).
    #[arg(long, env = "HERD_IDLE_TIMEOUT", global = true)]
    pub idle_timeout: Option<String>,
    /// Most HTTP connections served at once; further ones wait to be accepted.
    #[arg(long, env = "HERD_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<String>,
    /// Device credentials kept in memory so that a heartbeat needs no database read (0: none).
    #[arg(long, env = "HERD_DEVICE_CACHE_ENTRIES", global = true)]
    pub device_cache_entries: Option<String>,
    /// Password hashes (logins) run at once. Default: the number of cores.
    #[arg(long, env = "HERD_LOGIN_HASH_CONCURRENCY", global = true)]
    pub login_hash_concurrency: Option<String>,
    /// Logins that may wait for a hashing turn; beyond them 503. Default: 4 × the concurrency.
    #[arg(long, env = "HERD_LOGIN_HASH_QUEUE", global = true)]
    pub login_hash_queue: Option<String>,
    /// Login attempts per source address (IPv6: per /64) per minute; beyond them 429.
    #[arg(long, env = "HERD_LOGIN_RATE_PER_ADDRESS", global = true)]
    pub login_rate_per_address: Option<String>,
    /// Login attempts per username per minute; beyond them 429.
    #[arg(long, env = "HERD_LOGIN_RATE_PER_USERNAME", global = true)]
    pub login_rate_per_username: Option<String>,
    /// Consecutive failed logins that lock a username (0: never lock).
    #[arg(long, env = "HERD_LOGIN_LOCK_AFTER", global = true)]
    pub login_lock_after: Option<String>,
    /// The window those failures must fall in (e.g. `15m`).
    #[arg(long, env = "HERD_LOGIN_LOCK_WINDOW", global = true)]
    pub login_lock_window: Option<String>,
    /// How long a locked username is refused (e.g. `15m`).
    #[arg(long, env = "HERD_LOGIN_LOCK_DURATION", global = true)]
    pub login_lock_duration: Option<String>,
    /// Where uploaded files (screenshots, packages) are kept: `file` (`<data-dir>/blobs`) or `s3`.
    #[arg(long, env = "HERD_BLOB_STORE", global = true)]
    pub blob_store: Option<String>,
    /// The S3 bucket (required with `blob_store = s3`).
    #[arg(long, env = "HERD_S3_BUCKET", global = true)]
    pub s3_bucket: Option<String>,
    /// The S3 endpoint of a non-AWS store (e.g. `http://127.0.0.1:9000`); unset: AWS.
    #[arg(long, env = "HERD_S3_ENDPOINT", global = true)]
    pub s3_endpoint: Option<String>,
    /// The S3 region. Default: `us-east-1`.
    #[arg(long, env = "HERD_S3_REGION", global = true)]
    pub s3_region: Option<String>,
    /// The S3 access key id (with the secret access key; unset: the instance's credentials).
    #[arg(long, env = "HERD_S3_ACCESS_KEY_ID", global = true)]
    pub s3_access_key_id: Option<String>,
    /// The S3 secret access key.
    #[arg(long, env = "HERD_S3_SECRET_ACCESS_KEY", global = true, hide_env_values = true)]
    pub s3_secret_access_key: Option<Secret>,
    /// A key prefix inside the bucket (e.g. `herd/`), so the bucket can hold other things too.
    #[arg(long, env = "HERD_S3_PREFIX", global = true)]
    pub s3_prefix: Option<String>,
}

/// The limits on `POST /auth/login` (see `auth::limits`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginLimitSettings {
    /// Password hashes running at once.
    pub hash_concurrency: usize,
    /// Logins waiting for a hashing turn; more are answered 503.
    pub hash_queue: usize,
    pub attempts_per_address_per_minute: u32,
    pub attempts_per_username_per_minute: u32,
    /// Consecutive failures that lock a username (0: never).
    pub lock_after: u32,
    pub lock_window: Duration,
    pub lock_duration: Duration,
}

impl Default for LoginLimitSettings {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        Self {
            hash_concurrency: cores,
            hash_queue: 4 * cores,
            attempts_per_address_per_minute: 60,
            attempts_per_username_per_minute: 20,
            lock_after: 10,
            lock_window: Duration::from_secs(15 * 60),
            lock_duration: Duration::from_secs(15 * 60),
        }
    }
}

/// Where device certificates and keys are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStoreKind {
    File,
    Database,
}

/// Where blobs (uploaded files) are kept (see `blobs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobStoreSettings {
    /// Files under `<data-dir>/blobs`.
    File,
    /// An S3-compatible bucket.
    S3(S3Settings),
}

/// An S3-compatible bucket for blobs. Its `Debug` hides the secret access key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    /// `http(s)://host:port` of a non-AWS store; `None` for AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    /// Both or neither of the keys; neither uses the environment's credentials (instance role).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    /// Key prefix inside the bucket, without slashes at either end.
    pub prefix: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The validated configuration of one herd process.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    /// Resolved database URL (never empty). Its `Debug` hides a password.
    pub database_url: DatabaseUrl,
    pub listen: SocketAddr,
    pub presence_threshold: Duration,
    pub presence_sweep_interval: Duration,
    pub cert_validity_days: u32,
    pub cert_renewal_warning_days: u32,
    pub cert_auto_renewal_days: u32,
    pub cert_key_size: u32,
    pub cert_monitor_interval: Duration,
    pub cert_organization: String,
    pub cert_country: String,
    pub cert_store: CertStoreKind,
    pub public_url: Option<String>,
    /// Key algorithm of a CA generated on first start (an existing CA is loaded as it is).
    pub ca_key_algorithm: herd_pki::CaKeyAlgorithm,
    /// Pre-generated RSA device keys kept ready by a background thread (0: none).
    pub cert_key_pool_size: usize,
    pub metrics_retention: Duration,
    pub log_format: Option<LogFormat>,
    pub bootstrap_token: Option<Secret>,
    pub key_encryption_key: Option<Secret>,
    /// The scrape token `GET /metrics` requires; `None` leaves `/metrics` public (the figures
    /// then include device counts over all tenants, which the start-up log warns about).
    pub metrics_token: Option<Secret>,
    pub request_timeout: Duration,
    /// The bound of artifact uploads and downloads instead of `request_timeout` (they may
    /// still not stall: no request-body byte for `request_timeout` fails an upload).
    pub transfer_timeout: Duration,
    /// How long a signed package download URL stays valid.
    pub download_url_ttl: Duration,
    pub body_limit: usize,
    pub session_ttl: Duration,
    pub bench_echo: bool,
    pub heartbeat_flush_interval: Duration,
    pub event_retention: Duration,
    pub webhook_allow_private: bool,
    pub webhook_delivery_interval: Duration,
    /// How often the command expiry job runs.
    pub command_expiry_interval: Duration,
    /// How often the rollout job runs.
    pub rollout_interval: Duration,
    /// Largest screenshot upload, in bytes.
    pub screenshot_max_bytes: usize,
    /// Largest package upload, in bytes.
    pub package_max_bytes: u64,
    /// How often an open `GET /events/stream` re-checks its credential (it also checks before
    /// each batch of events it sends); a revoked or expired one ends the stream.
    pub event_stream_recheck_interval: Duration,
    /// Most open event streams per token (429 beyond).
    pub event_streams_per_token: usize,
    /// Most open event streams per tenant on one instance (429 beyond).
    pub event_streams_per_tenant: usize,
    /// Longest time to send a request's headers (and to begin the next one on a kept-alive
    /// connection) before the connection is closed.
    pub header_read_timeout: Duration,
    /// A connection with no bytes moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// Most HTTP connections served at once (further ones wait in the listen queue); lowered
    /// at start to what the open-file limit allows.
    pub max_connections: usize,
    /// Device credentials the cache holds (0: no cache); see `herd_store::cache`.
    pub device_cache_entries: usize,
    pub login: LoginLimitSettings,
    /// Where blobs (screenshots, packages) are kept.
    pub blob_store: BlobStoreSettings,
}

/// A secret setting (a token or a key). Its `Debug` prints `[redacted]`, so settings printed
/// with `{:?}` or logged give nothing away; [`Secret::expose`] is the one way to the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A database URL. It reads as a `&str` (`Deref`); its `Debug` and `Display` hide the password
/// (`postgres://user:***@host/db`), so settings printed or logged give it away nowhere.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl std::ops::Deref for DatabaseUrl {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for DatabaseUrl {
    fn from(value: String) -> Self {
        DatabaseUrl(value)
    }
}

impl From<&str> for DatabaseUrl {
    fn from(value: &str) -> Self {
        DatabaseUrl(value.to_string())
    }
}

impl PartialEq<&str> for DatabaseUrl {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", crate::app::redact(&self.0))
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::app::redact(&self.0))
    }
}

/// A setting that could not be understood; the message names it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("configuration file {path} is not valid TOML: {source}")]
    ParseFile { path: PathBuf, source: toml::de::Error },
    #[error("configuration file {path}: unknown setting `{key}`")]
    UnknownKey { path: PathBuf, key: String },
    #[error("setting `{name}` = {value:?}: {reason}")]
    Invalid { name: &'static str, value: String, reason: String },
}

impl Settings {
    /// Defaults for a data directory, as the seed and DESIGN.md give them.
    pub fn defaults_for(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            database_url: default_database_url(&data_dir).into(),
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            presence_threshold: Duration::from_secs(5 * 60),
            presence_sweep_interval: Duration::from_secs(60),
            cert_validity_days: 365,
            cert_renewal_warning_days: 30,
            cert_auto_renewal_days: 7,
            cert_key_size: 2048,
            cert_monitor_interval: Duration::from_secs(3600),
            cert_organization: "BTManagement".into(),
            cert_country: "IL".into(),
            cert_store: CertStoreKind::File,
            public_url: None,
            ca_key_algorithm: herd_pki::CaKeyAlgorithm::default(),
            cert_key_pool_size: 4,
            metrics_retention: Duration::from_secs(30 * 86_400),
            log_format: None,
            bootstrap_token: None,
            key_encryption_key: None,
            metrics_token: None,
            request_timeout: Duration::from_secs(30),
            transfer_timeout: Duration::from_secs(3600),
            download_url_ttl: Duration::from_secs(15 * 60),
            body_limit: 1024 * 1024,
            session_ttl: Duration::from_secs(12 * 3600),
            bench_echo: false,
            heartbeat_flush_interval: Duration::from_secs(1),
            event_retention: Duration::from_secs(7 * 86_400),
            webhook_allow_private: false,
            webhook_delivery_interval: Duration::from_secs(1),
            command_expiry_interval: Duration::from_secs(5),
            rollout_interval: Duration::from_secs(5),
            screenshot_max_bytes: 10 * 1024 * 1024,
            package_max_bytes: 2 * 1024 * 1024 * 1024,
            event_stream_recheck_interval: Duration::from_secs(5),
            event_streams_per_token: 4,
            event_streams_per_tenant: 64,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            device_cache_entries: 100_000,
            login: LoginLimitSettings::default(),
            blob_store: BlobStoreSettings::File,
        }
    }

    /// Merges flags/environment (`args`) over the configuration file over the defaults.
    pub fn load(args: &ConfigArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None if Path::new("herd.toml").exists() => read_file(Path::new("herd.toml"))?,
            None => BTreeMap::new(),
        };
        let pick =
            |name: &str, flag: &Option<String>| -> Option<String> { flag.clone().or_else(|| file.get(name).cloned()) };

        let data_dir = PathBuf::from(pick("data_dir", &args.data_dir).unwrap_or_else(|| "./herd-data".into()));
        let mut settings = Self::defaults_for(&data_dir);
        if let Some(url) = pick("database_url", &args.database_url) {
            settings.database_url = parse_database_url(&url)?.into();
        }
        if let Some(v) = pick("listen", &args.listen) {
            settings.listen = v.parse().map_err(|e: std::net::AddrParseError| invalid("listen", &v, e))?;
        }
        if let Some(v) = pick("presence_threshold", &args.presence_threshold) {
            settings.presence_threshold = parse_duration("presence_threshold", &v)?;
        }
        if let Some(v) = pick("presence_sweep_interval", &args.presence_sweep_interval) {
            settings.presence_sweep_interval = parse_duration("presence_sweep_interval", &v)?;
        }
        if let Some(v) = pick("cert_validity_days", &args.cert_validity_days) {
            settings.cert_validity_days = parse_number("cert_validity_days", &v, 1, 36_500)?;
        }
        if let Some(v) = pick("cert_renewal_warning_days", &args.cert_renewal_warning_days) {
            settings.cert_renewal_warning_days = parse_number("cert_renewal_warning_days", &v, 0, 36_500)?;
        }
        if let Some(v) = pick("cert_auto_renewal_days", &args.cert_auto_renewal_days) {
            settings.cert_auto_renewal_days = parse_number("cert_auto_renewal_days", &v, 0, 36_500)?;
        }
        if let Some(v) = pick("cert_key_size", &args.cert_key_size) {
            let bits = parse_number("cert_key_size", &v, 2048, 4096)?;
            if ![2048, 3072, 4096].contains(&bits) {
                return Err(invalid("cert_key_size", &v, "must be 2048, 3072 or 4096"));
            }
            settings.cert_key_size = bits;
        }
        if let Some(v) = pick("cert_monitor_interval", &args.cert_monitor_interval) {
            settings.cert_monitor_interval = parse_duration("cert_monitor_interval", &v)?;
        }
        if let Some(v) = pick("cert_organization", &args.cert_organization) {
            settings.cert_organization = non_empty("cert_organization", v)?;
        }
        if let Some(v) = pick("cert_country", &args.cert_country) {
            if v.len() != 2 || !v.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(invalid("cert_country", &v, "must be a two-letter ISO 3166 code such as IL"));
            }
            settings.cert_country = v;
        }
        if let Some(v) = pick("cert_store", &args.cert_store) {
            settings.cert_store = match v.as_str() {
                "file" => CertStoreKind::File,
                "database" => CertStoreKind::Database,
                _ => return Err(invalid("cert_store", &v, "must be `file` or `database`")),
            };
        }
        if let Some(v) = pick("public_url", &args.public_url) {
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                return Err(invalid("public_url", &v, "must start with http:// or https://"));
            }
            settings.public_url = Some(v.trim_end_matches('/').to_string());
        }
        if let Some(v) = pick("ca_key_algorithm", &args.ca_key_algorithm) {
            settings.ca_key_algorithm = v.parse().map_err(|e| invalid("ca_key_algorithm", &v, e))?;
        }
        if let Some(v) = pick("cert_key_pool_size", &args.cert_key_pool_size) {
            settings.cert_key_pool_size = parse_number("cert_key_pool_size", &v, 0, 1024)? as usize;
        }
        if let Some(v) = pick("metrics_retention", &args.metrics_retention) {
            settings.metrics_retention = parse_duration("metrics_retention", &v)?;
        }
        if let Some(v) = pick("log_format", &args.log_format) {
            settings.log_format = Some(match v.as_str() {
                "pretty" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                _ => return Err(invalid("log_format", &v, "must be `pretty` or `json`")),
            });
        }
        let exposed = |secret: &Option<Secret>| secret.as_ref().map(|s| s.expose().to_string());
        if let Some(v) = pick("bootstrap_token", &exposed(&args.bootstrap_token)) {
            if v.len() < 16 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid("bootstrap_token", "<hidden>", "must be at least 16 characters without spaces"));
            }
            settings.bootstrap_token = Some(v.into());
        }
        settings.key_encryption_key = pick("key_encryption_key", &exposed(&args.key_encryption_key)).map(Secret::from);
        if let Some(v) = pick("metrics_token", &exposed(&args.metrics_token)) {
            if v.len() < 16 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(invalid("metrics_token", "<hidden>", "must be at least 16 characters without spaces"));
            }
            settings.metrics_token = Some(v.into());
        }
        if let Some(v) = pick("request_timeout", &args.request_timeout) {
            settings.request_timeout = parse_duration("request_timeout", &v)?;
        }
        if let Some(v) = pick("transfer_timeout", &args.transfer_timeout) {
            settings.transfer_timeout = parse_duration("transfer_timeout", &v)?;
        }
        if settings.transfer_timeout < settings.request_timeout {
            return Err(invalid(
                "transfer_timeout",
                &humantime::format_duration(settings.transfer_timeout).to_string(),
                "must be at least request_timeout",
            ));
        }
        if let Some(v) = pick("download_url_ttl", &args.download_url_ttl) {
            let ttl = parse_duration("download_url_ttl", &v)?;
            if !(Duration::from_secs(60)..=Duration::from_secs(86_400)).contains(&ttl) {
                return Err(invalid("download_url_ttl", &v, "must be between 1m and 24h"));
            }
            settings.download_url_ttl = ttl;
        }
        if let Some(v) = pick("body_limit", &args.body_limit) {
            settings.body_limit = parse_number("body_limit", &v, 1024, 1 << 30)? as usize;
        }
        if let Some(v) = pick("session_ttl", &args.session_ttl) {
            settings.session_ttl = parse_duration("session_ttl", &v)?;
        }
        if let Some(v) = pick("bench_echo", &args.bench_echo) {
            settings.bench_echo = parse_bool("bench_echo", &v)?;
        }
        if let Some(v) = pick("heartbeat_flush_interval", &args.heartbeat_flush_interval) {
            settings.heartbeat_flush_interval = parse_duration("heartbeat_flush_interval", &v)?;
        }
        if let Some(v) = pick("event_retention", &args.event_retention) {
            settings.event_retention = parse_duration("event_retention", &v)?;
        }
        if let Some(v) = pick("webhook_allow_private", &args.webhook_allow_private) {
            settings.webhook_allow_private = parse_bool("webhook_allow_private", &v)?;
        }
        if let Some(v) = pick("webhook_delivery_interval", &args.webhook_delivery_interval) {
            settings.webhook_delivery_interval = parse_duration("webhook_delivery_interval", &v)?;
        }
        if let Some(v) = pick("command_expiry_interval", &args.command_expiry_interval) {
            settings.command_expiry_interval = parse_duration("command_expiry_interval", &v)?;
        }
        if let Some(v) = pick("rollout_interval", &args.rollout_interval) {
            settings.rollout_interval = parse_duration("rollout_interval", &v)?;
        }
        if let Some(v) = pick("screenshot_max_bytes", &args.screenshot_max_bytes) {
            settings.screenshot_max_bytes = parse_number("screenshot_max_bytes", &v, 1024, 256 * 1024 * 1024)? as usize;
        }
        if let Some(v) = pick("package_max_bytes", &args.package_max_bytes) {
            let n: u64 = v.trim().parse().map_err(|e| invalid("package_max_bytes", &v, e))?;
            if !(1024..=1 << 40).contains(&n) {
                return Err(invalid("package_max_bytes", &v, "must be between 1024 and 1099511627776"));
            }
            settings.package_max_bytes = n;
        }
        if let Some(v) = pick("event_stream_recheck_interval", &args.event_stream_recheck_interval) {
            settings.event_stream_recheck_interval = parse_duration("event_stream_recheck_interval", &v)?;
        }
        if let Some(v) = pick("event_streams_per_token", &args.event_streams_per_token) {
            settings.event_streams_per_token = parse_number("event_streams_per_token", &v, 1, 100_000)? as usize;
        }
        if let Some(v) = pick("event_streams_per_tenant", &args.event_streams_per_tenant) {
            settings.event_streams_per_tenant = parse_number("event_streams_per_tenant", &v, 1, 1_000_000)? as usize;
        }
        if let Some(v) = pick("header_read_timeout", &args.header_read_timeout) {
            settings.header_read_timeout = parse_duration("header_read_timeout", &v)?;
        }
        if let Some(v) = pick("idle_timeout", &args.idle_timeout) {
            settings.idle_timeout = parse_duration("idle_timeout", &v)?;
        }
        if let Some(v) = pick("max_connections", &args.max_connections) {
            settings.max_connections = parse_number("max_connections", &v, 1, 1_000_000)? as usize;
        }
        if let Some(v) = pick("device_cache_entries", &args.device_cache_entries) {
            settings.device_cache_entries = parse_number("device_cache_entries", &v, 0, 100_000_000)? as usize;
        }
        // hyper watches a busy connection for EOF, so the idle timer also runs while a handler
        // works (bounded by the request timeout) and between an event stream's keep-alives.
        // Without a setting of its own it follows a long request timeout.
        let idle_floor = settings.request_timeout.max(Duration::from_secs(STREAM_KEEP_ALIVE_SECS));
        if pick("idle_timeout", &args.idle_timeout).is_none() {
            settings.idle_timeout = settings.idle_timeout.max(idle_floor + Duration::from_secs(30));
        }
        if settings.idle_timeout <= idle_floor {
            return Err(invalid(
                "idle_timeout",
                &humantime::format_duration(settings.idle_timeout).to_string(),
                format!(
                    "must be longer than request_timeout and than the event stream's {STREAM_KEEP_ALIVE_SECS}s keep-alive ({})",
                    humantime::format_duration(idle_floor)
                ),
            ));
        }
        let queue_given = pick("login_hash_queue", &args.login_hash_queue);
        if let Some(v) = pick("login_hash_concurrency", &args.login_hash_concurrency) {
            settings.login.hash_concurrency = parse_number("login_hash_concurrency", &v, 1, 1024)? as usize;
            settings.login.hash_queue = 4 * settings.login.hash_concurrency;
        }
        if let Some(v) = queue_given {
            settings.login.hash_queue = parse_number("login_hash_queue", &v, 0, 100_000)? as usize;
        }
        if let Some(v) = pick("login_rate_per_address", &args.login_rate_per_address) {
            settings.login.attempts_per_address_per_minute = parse_number("login_rate_per_address", &v, 1, 1_000_000)?;
        }
        if let Some(v) = pick("login_rate_per_username", &args.login_rate_per_username) {
            settings.login.attempts_per_username_per_minute =
                parse_number("login_rate_per_username", &v, 1, 1_000_000)?;
        }
        if let Some(v) = pick("login_lock_after", &args.login_lock_after) {
            settings.login.lock_after = parse_number("login_lock_after", &v, 0, 1_000_000)?;
        }
        if let Some(v) = pick("login_lock_window", &args.login_lock_window) {
            settings.login.lock_window = parse_duration("login_lock_window", &v)?;
        }
        if let Some(v) = pick("login_lock_duration", &args.login_lock_duration) {
            settings.login.lock_duration = parse_duration("login_lock_duration", &v)?;
        }
        if let Some(v) = pick("blob_store", &args.blob_store) {
            settings.blob_store = match v.as_str() {
                "file" => BlobStoreSettings::File,
                "s3" => BlobStoreSettings::S3(parse_s3_settings(args, &pick)?),
                _ => return Err(invalid("blob_store", &v, "must be `file` or `s3`")),
            };
        }
        if settings.cert_auto_renewal_days >= settings.cert_validity_days {
            return Err(invalid(
                "cert_auto_renewal_days",
                &settings.cert_auto_renewal_days.to_string(),
                "must be smaller than cert_validity_days",
            ));
        }
        Ok(settings)
    }

    /// True when the database is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.database_url.starts_with("postgres://") || self.database_url.starts_with("postgresql://")
    }
}

/// How often an idle event stream sends a keep-alive comment (`events::routes`).
pub(crate) const STREAM_KEEP_ALIVE_SECS: u64 = 15;

const KNOWN_KEYS: &[&str] = &[
    "data_dir",
    "database_url",
    "listen",
    "presence_threshold",
    "presence_sweep_interval",
    "cert_validity_days",
    "cert_renewal_warning_days",
    "cert_auto_renewal_days",
    "cert_key_size",
    "cert_monitor_interval",
    "cert_organization",
    "cert_country",
    "cert_store",
    "public_url",
    "ca_key_algorithm",
    "cert_key_pool_size",
    "metrics_retention",
    "log_format",
    "bootstrap_token",
    "key_encryption_key",
    "metrics_token",
    "request_timeout",
    "transfer_timeout",
    "download_url_ttl",
    "body_limit",
    "session_ttl",
    "bench_echo",
    "heartbeat_flush_interval",
    "event_retention",
    "webhook_allow_private",
    "webhook_delivery_interval",
    "command_expiry_interval",
    "rollout_interval",
    "screenshot_max_bytes",
    "package_max_bytes",
    "event_stream_recheck_interval",
    "event_streams_per_token",
    "event_streams_per_tenant",
    "header_read_timeout",
    "idle_timeout",
    "max_connections",
    "device_cache_entries",
    "login_hash_concurrency",
    "login_hash_queue",
    "login_rate_per_address",
    "login_rate_per_username",
    "login_lock_after",
    "login_lock_window",
    "login_lock_duration",
    "blob_store",
    "s3_bucket",
    "s3_endpoint",
    "s3_region",
    "s3_access_key_id",
    "s3_secret_access_key",
    "s3_prefix",
];

fn read_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile { path: path.into(), source })?;
    let table: toml::Table = text.parse().map_err(|source| ConfigError::ParseFile { path: path.into(), source })?;
    let mut values = BTreeMap::new();
    for (key, value) in table {
        if !KNOWN_KEYS.contains(&key.as_str()) {
            return Err(ConfigError::UnknownKey { path: path.into(), key });
        }
        let text = match value {
            toml::Value::String(s) => s,
            other => other.to_string(),
        };
        values.insert(key, text);
    }
    Ok(values)
}

/// The `s3_*` settings of `blob_store = s3`: a bucket is required, an endpoint is a URL, the
/// keys come as a pair, and the prefix follows the blob key rules.
fn parse_s3_settings(
    args: &ConfigArgs,
    pick: &dyn Fn(&str, &Option<String>) -> Option<String>,
) -> Result<S3Settings, ConfigError> {
    let bucket = pick("s3_bucket", &args.s3_bucket)
        .filter(|bucket| !bucket.trim().is_empty())
        .ok_or_else(|| invalid("s3_bucket", "", "is required when blob_store is `s3` (HERD_S3_BUCKET)"))?;
    if !bucket.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
        return Err(invalid("s3_bucket", &bucket, "must be an S3 bucket name"));
    }
    let endpoint = pick("s3_endpoint", &args.s3_endpoint).map(|endpoint| endpoint.trim_end_matches('/').to_string());
    if let Some(endpoint) = &endpoint {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(invalid("s3_endpoint", endpoint, "must start with http:// or https://"));
        }
    }
    let region = non_empty("s3_region", pick("s3_region", &args.s3_region).unwrap_or_else(|| "us-east-1".into()))?;
    let secret = args.s3_secret_access_key.as_ref().map(|s| s.expose().to_string());
    let access_key_id = pick("s3_access_key_id", &args.s3_access_key_id);
    let secret_access_key = pick("s3_secret_access_key", &secret).map(Secret::from);
    if access_key_id.is_some() != secret_access_key.is_some() {
        return Err(invalid("s3_access_key_id", "<hidden>", "needs s3_secret_access_key, and the other way round"));
    }
    let prefix = pick("s3_prefix", &args.s3_prefix)
        .map(|prefix| prefix.trim_matches('/').to_string())
        .filter(|prefix| !prefix.is_empty());
    if let Some(prefix) = &prefix {
        if crate::blobs::validate_key(prefix).is_err() {
            return Err(invalid("s3_prefix", prefix, "may hold only A-Z a-z 0-9 . _ - and / between segments"));
        }
    }
    Ok(S3Settings { bucket, endpoint, region, access_key_id, secret_access_key, prefix })
}

fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("herd.db").display())
}

fn parse_database_url(url: &str) -> Result<String, ConfigError> {
    let ok = ["sqlite://", "sqlite:", "postgres://", "postgresql://"].iter().any(|p| url.starts_with(p));
    if ok {
        Ok(url.to_string())
    } else {
        Err(invalid("database_url", url, "must start with sqlite:// or postgres://"))
    }
}

fn parse_duration(name: &'static str, value: &str) -> Result<Duration, ConfigError> {
    let parsed = humantime::parse_duration(value.trim()).map_err(|e| invalid(name, value, e))?;
    if parsed.is_zero() {
        return Err(invalid(name, value, "must be longer than zero"));
    }
    Ok(parsed)
}

fn parse_bool(name: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(name, value, "must be true or false")),
    }
}

fn parse_number(name: &'static str, value: &str, min: u32, max: u32) -> Result<u32, ConfigError> {
    let n: u32 = value.trim().parse().map_err(|e| invalid(name, value, e))?;
    if n < min || n > max {
        return Err(invalid(name, value, format!("must be between {min} and {max}")));
    }
    Ok(n)
}

fn non_empty(name: &'static str, value: String) -> Result<String, ConfigError> {
    if value.trim().is_empty() {
        return Err(invalid(name, &value, "must not be empty"));
    }
    Ok(value)
}

fn invalid(name: &'static str, value: &str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid { name, value: value.to_string(), reason: reason.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_seed() {
        let s = Settings::load(&ConfigArgs { data_dir: Some("/tmp/x".into()), ..Default::default() }).unwrap();
        assert_eq!(s.presence_threshold, Duration::from_secs(300));
        assert_eq!(s.cert_validity_days, 365);
        assert_eq!(s.cert_key_size, 2048);
        assert_eq!(s.database_url, "sqlite:///tmp/x/herd.db");
        assert!(!s.is_postgres());
    }

    #[test]
    fn durations_and_bad_values() {
        let args = ConfigArgs { presence_threshold: Some("90s".into()), ..Default::default() };
        assert_eq!(Settings::load(&args).unwrap().presence_threshold, Duration::from_secs(90));
        let args = ConfigArgs { presence_threshold: Some("soon".into()), ..Default::default() };
        assert!(Settings::load(&args).unwrap_err().to_string().contains("presence_threshold"));
        let args = ConfigArgs { cert_key_size: Some("1024".into()), ..Default::default() };
        assert!(Settings::load(&args).is_err());
        let args = ConfigArgs { cert_store: Some("s3".into()), ..Default::default() };
        assert!(Settings::load(&args).is_err());
        let args = ConfigArgs { metrics_token: Some("short".into()), ..Default::default() };
        assert!(Settings::load(&args).unwrap_err().to_string().contains("metrics_token"));
    }

    #[test]
    fn the_idle_timeout_outlasts_handlers_and_stream_keep_alives() {
        let args = ConfigArgs { idle_timeout: Some("30s".into()), ..Default::default() };
        assert!(Settings::load(&args).unwrap_err().to_string().contains("idle_timeout"));
        let args =
            ConfigArgs { idle_timeout: Some("20s".into()), request_timeout: Some("10s".into()), ..Default::default() };
        assert_eq!(Settings::load(&args).unwrap().idle_timeout, Duration::from_secs(20));
        let args =
            ConfigArgs { idle_timeout: Some("10s".into()), request_timeout: Some("5s".into()), ..Default::default() };
        assert!(Settings::load(&args).is_err(), "below the stream keep-alive");
        let args = ConfigArgs { request_timeout: Some("300s".into()), ..Default::default() };
        assert_eq!(Settings::load(&args).unwrap().idle_timeout, Duration::from_secs(330), "the default follows");
    }

    #[test]
    fn transfers_and_download_urls_have_their_own_bounds() {
        let s = Settings::load(&ConfigArgs::default()).unwrap();
        assert_eq!((s.transfer_timeout, s.download_url_ttl), (Duration::from_secs(3600), Duration::from_secs(900)));
        let args = ConfigArgs {
            transfer_timeout: Some("2h".into()),
            download_url_ttl: Some("1m".into()),
            ..Default::default()
        };
        let s = Settings::load(&args).unwrap();
        assert_eq!((s.transfer_timeout, s.download_url_ttl), (Duration::from_secs(7200), Duration::from_secs(60)));
        for (args, name) in [
            (ConfigArgs { transfer_timeout: Some("10s".into()), ..Default::default() }, "transfer_timeout"),
            (ConfigArgs { transfer_timeout: Some("soon".into()), ..Default::default() }, "transfer_timeout"),
            (ConfigArgs { download_url_ttl: Some("59s".into()), ..Default::default() }, "download_url_ttl"),
            (ConfigArgs { download_url_ttl: Some("25h".into()), ..Default::default() }, "download_url_ttl"),
        ] {
            assert!(Settings::load(&args).unwrap_err().to_string().contains(name), "{name}");
        }
    }

    #[test]
    fn file_is_read_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herd.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\ncert_validity_days = 90\n").unwrap();
        let args =
            ConfigArgs { config: Some(path.clone()), listen: Some("127.0.0.1:9001".into()), ..Default::default() };
        let s = Settings::load(&args).unwrap();
        assert_eq!(s.listen.port(), 9001);
        assert_eq!(s.cert_validity_days, 90);
        std::fs::write(&path, "listne = 1\n").unwrap();
        let args = ConfigArgs { config: Some(path), ..Default::default() };
        assert!(matches!(Settings::load(&args), Err(ConfigError::UnknownKey { .. })));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let (token, kek, scrape) = ("bootstrap-secret-0123456789", "ab".repeat(32), "metrics-scrape-secret-42");
        let args = ConfigArgs {
            data_dir: Some("/tmp/x".into()),
            bootstrap_token: Some(token.into()),
            key_encryption_key: Some(kek.as_str().into()),
            metrics_token: Some(scrape.into()),
            ..Default::default()
        };
        let settings = Settings::load(&args).unwrap();
        assert_eq!(settings.bootstrap_token.as_ref().map(Secret::expose), Some(token));
        assert_eq!(settings.key_encryption_key.as_ref().map(Secret::expose), Some(kek.as_str()));
        assert_eq!(settings.metrics_token.as_ref().map(Secret::expose), Some(scrape));
        for printed in [format!("{settings:?}"), format!("{settings:#?}"), format!("{args:?}")] {
            assert!(!printed.contains(token) && !printed.contains(&kek) && !printed.contains(scrape), "{printed}");
            assert!(printed.contains("[redacted]"), "{printed}");
        }
    }

    #[test]
    fn the_blob_store_is_files_or_an_s3_bucket() {
        let s = Settings::load(&ConfigArgs::default()).unwrap();
        assert_eq!(s.blob_store, BlobStoreSettings::File);
        let args = ConfigArgs { blob_store: Some("s3".into()), ..Default::default() };
        let error = Settings::load(&args).unwrap_err().to_string();
        assert!(error.contains("s3_bucket") && error.contains("required"), "{error}");
        let args = ConfigArgs { blob_store: Some("ftp".into()), ..Default::default() };
        assert!(Settings::load(&args).unwrap_err().to_string().contains("blob_store"));

        let secret = "s3-secret-key-do-not-print";
        let args = ConfigArgs {
            blob_store: Some("s3".into()),
            s3_bucket: Some("herd-blobs".into()),
            s3_endpoint: Some("http://127.0.0.1:9000/".into()),
            s3_access_key_id: Some("herd".into()),
            s3_secret_access_key: Some(secret.into()),
            s3_prefix: Some("/herd/prod/".into()),
            ..Default::default()
        };
        let s = Settings::load(&args).unwrap();
        let BlobStoreSettings::S3(s3) = &s.blob_store else { panic!("{:?}", s.blob_store) };
        assert_eq!(s3.bucket, "herd-blobs");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.region, "us-east-1");
        assert_eq!(s3.prefix.as_deref(), Some("herd/prod"));
        assert_eq!(s3.secret_access_key.as_ref().map(Secret::expose), Some(secret));
        for printed in [format!("{s:?}"), format!("{args:?}")] {
            assert!(!printed.contains(secret), "{printed}");
        }

        let half = ConfigArgs { s3_secret_access_key: None, ..args.clone() };
        assert!(Settings::load(&half).unwrap_err().to_string().contains("s3_secret_access_key"));
        let bad_endpoint = ConfigArgs { s3_endpoint: Some("127.0.0.1:9000".into()), ..args.clone() };
        assert!(Settings::load(&bad_endpoint).unwrap_err().to_string().contains("s3_endpoint"));
        let bad_prefix = ConfigArgs { s3_prefix: Some("a/../b".into()), ..args.clone() };
        assert!(Settings::load(&bad_prefix).unwrap_err().to_string().contains("s3_prefix"));
        let file = ConfigArgs { blob_store: Some("file".into()), ..args };
        assert_eq!(Settings::load(&file).unwrap().blob_store, BlobStoreSettings::File, "s3_* alone choose nothing");
    }

    #[test]
    fn a_database_password_never_shows_in_debug_or_display() {
        let mut settings = Settings::defaults_for("/tmp/x");
        settings.database_url = "postgres://herd:s3cret-pw@127.0.0.1:5432/herd".into();
        for printed in [format!("{settings:?}"), settings.database_url.to_string()] {
            assert!(!printed.contains("s3cret-pw"), "{printed}");
            assert!(printed.contains("herd:***@127.0.0.1"), "{printed}");
        }
        assert!(settings.database_url.starts_with("postgres://herd:s3cret-pw@"), "the value itself is intact");
    }
}
