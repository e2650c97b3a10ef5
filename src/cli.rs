//! The command line: `serve` (default), `migrate`, `tenant create|list`, `ca`, `certificates
//! migrate-store`, `backup`, `restore`, `version`, `completions`, and the client commands of
//! `crate::client`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::app::{redact, App};
use crate::clock::{to_millis, Clock, SystemClock};
use crate::config::{ConfigArgs, LogFormat, Secret, Settings};
use crate::store::Db;
use crate::tenants::{self, Bootstrap, CreateTenantError};

#[derive(Debug, Parser)]
#[command(name = "herd", version, about = "Self-hosted, multi-tenant device provisioning and fleet management server")]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage herd's certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Manage device certificates.
    Certificates {
        #[command(subcommand)]
        command: CertificatesCommand,
    },
    /// Back up the database, the CA, the kek and the blobs into an empty DIR (safe while herd runs).
    Backup {
        dir: std::path::PathBuf,
        /// Leave `<data-dir>/blobs` (packages, screenshots) out of the backup.
        #[arg(long)]
        without_blobs: bool,
    },
    /// Check a backup made by `herd backup` and restore it into the configured (fresh) data
    /// directory and database.
    Restore {
        dir: std::path::PathBuf,
        /// Replace an existing database and data directory instead of refusing.
        #[arg(long)]
        force: bool,
    },
    /// Print the version.
    Version,
    /// Print a shell completion script: `herd completions bash > /etc/bash_completion.d/herd`.
    Completions { shell: clap_complete::Shell },
    /// Client commands: talk to a running herd over its API (`herd login`, `herd devices list`, …).
    #[command(flatten)]
    Client(crate::client::Command),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Generate the CA in <data-dir>/certificates (if there is none yet) and show it.
    Init,
    /// Print the CA's subject, fingerprint and validity.
    Show,
}

#[derive(Debug, Subcommand)]
enum CertificatesCommand {
    /// Move private keys into the key store named by HERD_CERT_STORE (file or database).
    MigrateStore,
    /// Client commands: issue, revoke, list and show certificates over the API.
    #[command(flatten)]
    Client(crate::client::CertificatesCommand),
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant and print its first admin token.
    Create { name: String },
    /// List tenants.
    List,
}

/// Parses the command line and runs it.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    // The version, completions and the client commands need none of the server's settings.
    match cli.command {
        Some(Command::Version) => {
            println!("herd {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(Command::Completions { shell }) => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "herd",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Some(Command::Client(command)) => return crate::client::run(command),
        Some(Command::Certificates { command: CertificatesCommand::Client(command) }) => {
            return crate::client::run_certificates(command)
        }
        _ => {}
    }
    let settings = match Settings::load(&cli.config) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("herd: {error}");
            return ExitCode::from(2);
        }
    };
    init_tracing(settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("herd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(settings).await,
            Command::Migrate => migrate(&settings).await,
            Command::Tenant { command: TenantCommand::Create { name } } => create_tenant(&settings, &name).await,
            Command::Tenant { command: TenantCommand::List } => list_tenants(&settings).await,
            Command::Ca { command: CaCommand::Init } => ca_init(&settings).await,
            Command::Ca { command: CaCommand::Show } => ca_show(&settings),
            Command::Certificates { command: CertificatesCommand::MigrateStore } => migrate_store(&settings).await,
            Command::Backup { dir, without_blobs } => {
                crate::backup::backup(&settings, &crate::backup::BackupOptions { dir, without_blobs }).await
            }
            Command::Restore { dir, force } => {
                crate::backup::restore(&settings, &crate::backup::RestoreOptions { dir, force }).await
            }
            Command::Version
            | Command::Completions { .. }
            | Command::Client(_)
            | Command::Certificates { command: CertificatesCommand::Client(_) } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("herd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: Option<LogFormat>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json = match format {
        Some(LogFormat::Json) => true,
        Some(LogFormat::Pretty) => false,
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let database = redact(&settings.database_url);
    if settings.metrics_token.is_none() {
        tracing::warn!(
            "GET /metrics is public and shows device counts over all tenants; set HERD_METRICS_TOKEN to require a scrape token"
        );
    }
    let app = App::build(settings).await?;
    match app.bootstrap() {
        Bootstrap::AlreadyDone => {}
        Bootstrap::CreatedWithConfiguredToken => {
            tracing::info!("created tenant `default`; its admin (and platform admin) token is HERD_BOOTSTRAP_TOKEN")
        }
        Bootstrap::CreatedWithTokenFile(path) => tracing::info!(
            path = %path.display(),
            "created tenant `default`; its admin (and platform admin) token is in this file (mode 0600)"
        ),
    }
    tracing::info!(address = %app.local_addr(), %database, "herd is listening");
    let console = console_address(app.local_addr());
    match app.bootstrap() {
        Bootstrap::CreatedWithTokenFile(path) => tracing::info!(
            "open {console} in a browser: choose \"Set up a user with the admin token\", paste the token from {} and pick a username and password",
            path.display()
        ),
        Bootstrap::CreatedWithConfiguredToken => tracing::info!(
            "open {console} in a browser: choose \"Set up a user with the admin token\", paste HERD_BOOTSTRAP_TOKEN and pick a username and password"
        ),
        Bootstrap::AlreadyDone => tracing::info!("the operator console is at {console}"),
    }
    let token = app.shutdown_token();
    tokio::spawn(async move {
        crate::shutdown::os_signal().await;
        token.cancel();
    });
    app.run_until_stopped().await?;
    tracing::info!("herd stopped");
    Ok(())
}

async fn open(settings: &Settings) -> anyhow::Result<Db> {
    use anyhow::Context;
    crate::files::create_private_dir(&settings.data_dir)?;
    crate::files::secure_sqlite_files(&settings.database_url)?;
    // The CLI's commands act on whole tenants or the platform, never through a tenant's
    // scope, so the system principal that comes with the handle is not needed here.
    let (db, _system) = Db::open(&settings.database_url)
        .await
        .with_context(|| format!("cannot open the database {}", redact(&settings.database_url)))?;
    db.migrate().await.context("cannot apply migrations")?;
    Ok(db)
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let db = open(settings).await?;
    db.close().await;
    println!("migrations applied to {}", redact(&settings.database_url));
    Ok(())
}

async fn create_tenant(settings: &Settings, name: &str) -> anyhow::Result<()> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        anyhow::bail!("a tenant name has 1 to 64 printable characters");
    }
    let db = open(settings).await?;
    let now = to_millis(SystemClock.now());
    // The platform admin comes with the first tenant; create it first so `default` exists.
    tenants::bootstrap(&db, &settings.data_dir, settings.bootstrap_token.as_ref().map(Secret::expose), now).await?;
    let result = tenants::create(&db, name, None, false, now).await;
    db.close().await;
    match result {
        Ok((tenant, token)) => {
            eprintln!("created tenant {} ({}); its first admin token:", tenant.name, tenant.id);
            println!("{token}");
            Ok(())
        }
        Err(CreateTenantError::Duplicate(name)) => anyhow::bail!("a tenant named {name:?} already exists"),
        Err(CreateTenantError::Store(error)) => Err(error.into()),
    }
}

async fn list_tenants(settings: &Settings) -> anyhow::Result<()> {
    let db = open(settings).await?;
    let mut after: Option<String> = None;
    loop {
        let mut rows = herd_store::tenants::list(&db, &herd_store::Page { limit: 500, after }).await?;
        let more = rows.len() > 500;
        rows.truncate(500);
        for row in &rows {
            println!("{}\t{}", row.id, row.name);
        }
        match rows.last() {
            Some(last) if more => after = Some(last.id.to_string()),
            _ => break,
        }
    }
    db.close().await;
    Ok(())
}

async fn ca_init(settings: &Settings) -> anyhow::Result<()> {
    let db = open(settings).await?;
    let (key_path, cert_path) = crate::certificates::authority::paths(&settings.data_dir);
    let existed = key_path.exists() && cert_path.exists();
    let result = crate::certificates::authority::open(&db, settings, to_millis(SystemClock.now())).await;
    db.close().await;
    let ca = result?;
    if existed {
        eprintln!("the CA already exists in {}; it was not changed", cert_path.display());
    } else {
        eprintln!("generated a CA: {} and {} (mode 0600)", cert_path.display(), key_path.display());
    }
    print!("{}", crate::certificates::authority::describe(&ca));
    Ok(())
}

fn ca_show(settings: &Settings) -> anyhow::Result<()> {
    let (key_path, cert_path) = crate::certificates::authority::paths(&settings.data_dir);
    if !cert_path.exists() {
        anyhow::bail!("there is no CA in {} yet; run `herd ca init` or start the server", cert_path.display());
    }
    let ca = crate::certificates::authority::load(&key_path, &cert_path)?;
    print!("{}", crate::certificates::authority::describe(&ca));
    Ok(())
}

async fn migrate_store(settings: &Settings) -> anyhow::Result<()> {
    let db = open(settings).await?;
    let result = async {
        let service =
            crate::certificates::CertificateService::start(&db, settings, to_millis(SystemClock.now())).await?;
        service.migrate_store().await
    }
    .await;
    db.close().await;
    let outcome = result?;
    println!(
        "moved {} private keys into the {} store; {} left where they are (still readable there)",
        outcome.moved,
        match settings.cert_store {
            crate::config::CertStoreKind::File => "file",
            crate::config::CertStoreKind::Database => "database",
        },
        outcome.skipped
    );
    Ok(())
}

/// The console's address for the log: a wildcard listen address is reached on loopback.
fn console_address(listen: std::net::SocketAddr) -> String {
    let host = match listen.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}/", listen.port())
}
