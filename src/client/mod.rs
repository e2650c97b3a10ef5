//! `herd` as a client of a running herd (step-ca's `step` is the model): `herd login` stores a
//! server and token in the user's config directory, and `herd devices list`, `herd certificates
//! issue`, `herd rollouts start` … call the public HTTP API with it. Tables for people, `--json`
//! for scripts (the API's JSON unchanged), problem+json errors shown with a non-zero exit.
//!
//! Must not: open a database, read the server's settings (`HERD_DATA_DIR`, `HERD_DATABASE_URL`)
//! or reach into the server's modules; whatever it does, an HTTP client anywhere could do too.

mod api;
mod config;
mod output;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Map, Value};

use api::Api;
use output::Column;

/// The server a command talks to when neither `--server`, `HERD_SERVER` nor a login names one.
const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Options every client command takes.
#[derive(Debug, Clone, Args)]
pub(crate) struct Connection {
    /// The herd to talk to (default: the one `herd login` stored, else http://127.0.0.1:8080).
    #[arg(long, env = "HERD_SERVER", global = true)]
    server: Option<String>,
    /// The bearer token to send instead of the stored one.
    #[arg(long, env = "HERD_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON as it came, for scripts.
    #[arg(long, global = true)]
    json: bool,
}

/// The client commands (`herd certificates issue|revoke|list` are in [`CertificatesCommand`],
/// beside the server's `certificates migrate-store`).
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Check a credential against a herd and store it for the commands below.
    Login(LoginArgs),
    /// Forget the stored credential (and end it on the server if it is a login session).
    Logout {
        #[command(flatten)]
        connection: Connection,
    },
    /// List, show and delete devices.
    Devices {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: DevicesCommand,
    },
    /// Create and list API tokens.
    Tokens {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Create and list enrollment tokens (the credential devices register with).
    EnrollmentTokens {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: EnrollmentTokensCommand,
    },
    /// Send remote commands to a device and follow them.
    Commands {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: CommandsCommand,
    },
    /// Staged software rollouts.
    Rollouts {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: RolloutsCommand,
    },
    /// Software packages.
    Packages {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: PackagesCommand,
    },
}

#[derive(Debug, Args)]
pub(crate) struct LoginArgs {
    #[command(flatten)]
    connection: Connection,
    /// Sign in with a username; the password is asked for (or read with --password-stdin).
    #[arg(long, conflicts_with = "token")]
    username: Option<String>,
    /// The tenant the user belongs to (default: `default`).
    #[arg(long, requires = "username")]
    tenant: Option<String>,
    /// Read the password from standard input (its first line) instead of asking.
    #[arg(long, requires = "username")]
    password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DevicesCommand {
    /// List devices, oldest first.
    List {
        /// `online` or `offline`.
        #[arg(long)]
        status: Option<String>,
        /// Only devices with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Search in names and serial numbers.
        #[arg(long)]
        search: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Show one device.
    Get { id: String },
    /// Delete a device (its token and certificates stop working).
    Delete { id: String },
}

/// `--limit` and `--cursor` of a list.
#[derive(Debug, Args)]
pub(crate) struct Page {
    /// How many items (1–500; the server's default is 50).
    #[arg(long)]
    limit: Option<u32>,
    /// Where to go on: the cursor a previous page printed.
    #[arg(long)]
    cursor: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokensCommand {
    /// Create an API token and print its secret (shown once).
    Create {
        #[arg(long)]
        name: String,
        /// `admin`, `operator` or `viewer`.
        #[arg(long, default_value = "viewer")]
        role: String,
        /// When it stops working (RFC 3339, e.g. 2027-01-01T00:00:00Z).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List API tokens.
    List {
        #[command(flatten)]
        page: Page,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EnrollmentTokensCommand {
    /// Create an enrollment token and print its secret (shown once).
    Create {
        #[arg(long)]
        name: Option<String>,
        /// How many devices may register with it.
        #[arg(long)]
        max_uses: Option<i64>,
        /// When it stops working (RFC 3339).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List enrollment tokens.
    List {
        #[command(flatten)]
        page: Page,
    },
}

/// The client verbs of `herd certificates` (flattened beside `migrate-store`).
#[derive(Debug, Subcommand)]
pub(crate) enum CertificatesCommand {
    /// Issue a certificate for a device: a server-generated key, or --csr FILE for the device's own.
    Issue {
        /// The device's id.
        device: String,
        /// A PEM certificate signing request made with the device's key.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Write certificate.pem, ca.pem (and private-key.pem, 0600) into this directory
        /// instead of printing the PEM texts.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Revoke a certificate.
    Revoke {
        /// The certificate's id.
        id: String,
        /// RFC 5280 reason: unspecified, keyCompromise, superseded, cessationOfOperation, …
        #[arg(long, default_value = "unspecified")]
        reason: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// List certificates, soonest to expire first.
    List {
        /// Only this device's.
        #[arg(long)]
        device: Option<String>,
        /// `pending`, `active`, `expired` or `revoked`.
        #[arg(long)]
        status: Option<String>,
        /// Only those that expire within this many days.
        #[arg(long)]
        expiring_within_days: Option<u32>,
        #[command(flatten)]
        page: Page,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show one certificate record.
    Get {
        id: String,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CommandsCommand {
    /// Queue a command for a device, e.g. `herd commands send ID reboot` or
    /// `herd commands send ID set_volume --payload '{"volume": 30}'`.
    Send {
        /// The device's id.
        device: String,
        /// reboot, restart_app, launch_app, open_url, set_volume, set_brightness, screenshot,
        /// clear_cache, install_package or custom.
        #[arg(value_name = "TYPE")]
        command_type: String,
        /// The type's parameters as a JSON object.
        #[arg(long, alias = "params")]
        payload: Option<String>,
        /// Seconds the device has to report a result once delivered.
        #[arg(long)]
        timeout_seconds: Option<i64>,
    },
    /// Show one command of a device.
    Get { device: String, command: String },
    /// List a device's commands.
    List {
        device: String,
        #[command(flatten)]
        page: Page,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RolloutsCommand {
    /// List rollouts.
    List {
        /// Only rollouts in this state.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        page: Page,
    },
    /// Show one rollout with its waves.
    Get { id: String },
    /// Create a rollout of a package (it waits, `ready`, unless --start).
    Create {
        /// The package's id.
        #[arg(long)]
        package: String,
        #[arg(long)]
        name: Option<String>,
        /// Target devices with this tag.
        #[arg(long, group = "target")]
        tag: Option<String>,
        /// Target devices of this model.
        #[arg(long, group = "target")]
        model: Option<String>,
        /// Target these devices (repeat, or comma-separate).
        #[arg(long = "device", group = "target", value_delimiter = ',')]
        devices: Vec<String>,
        /// Target the whole tenant.
        #[arg(long, group = "target")]
        all: bool,
        /// Cumulative percentages, e.g. 1,10,50,100.
        #[arg(long, value_delimiter = ',')]
        waves: Vec<i64>,
        #[arg(long)]
        soak_seconds: Option<i64>,
        #[arg(long)]
        failure_threshold: Option<i64>,
        #[arg(long)]
        allow_downgrade: bool,
        /// Start it at once.
        #[arg(long)]
        start: bool,
    },
    /// Start a ready rollout.
    Start { id: String },
    /// Pause a running rollout.
    Pause {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Resume a paused rollout.
    Resume { id: String },
    /// Cancel a rollout.
    Cancel { id: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PackagesCommand {
    /// List packages.
    List {
        #[command(flatten)]
        page: Page,
    },
    /// Upload a package file (streamed).
    Upload {
        file: PathBuf,
        /// `apk`, `firmware` or `file`.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        #[arg(long)]
        version_code: i64,
        /// Comma-separated device models (default: any).
        #[arg(long)]
        target_models: Option<String>,
        #[arg(long)]
        notes: Option<String>,
        #[arg(long, default_value = "application/octet-stream")]
        content_type: String,
    },
}

const DEVICE_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("STATUS", "status"),
    ("SERIAL", "serialNumber"),
    ("MODEL", "model"),
    ("LAST SEEN", "lastSeen"),
];
const CERTIFICATE_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("DEVICE", "deviceId"),
    ("STATUS", "status"),
    ("SERIAL", "serialNumber"),
    ("NOT AFTER", "notAfter"),
    ("KEY", "keySource"),
];
const TOKEN_COLUMNS: &[Column] =
    &[("ID", "id"), ("NAME", "name"), ("ROLE", "role"), ("EXPIRES", "expiresAt"), ("REVOKED", "revokedAt")];
const ENROLLMENT_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("USES", "uses"),
    ("MAX", "maxUses"),
    ("EXPIRES", "expiresAt"),
    ("REVOKED", "revokedAt"),
];
const COMMAND_COLUMNS: &[Column] = &[
    ("COMMAND", "commandId"),
    ("TYPE", "type"),
    ("STATE", "state"),
    ("QUEUED", "queuedAt"),
    ("FINISHED", "finishedAt"),
];
const ROLLOUT_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("STATE", "state"),
    ("WAVE", "currentWave"),
    ("TOTAL", "total"),
    ("PACKAGE", "packageId"),
];
const PACKAGE_COLUMNS: &[Column] = &[
    ("ID", "id"),
    ("KIND", "kind"),
    ("NAME", "name"),
    ("VERSION", "version"),
    ("CODE", "versionCode"),
    ("SIZE", "size"),
    ("MODELS", "targetModels"),
];

/// Runs a client command; errors are printed here, with exit code 1 (2 for a usage problem the
/// server never saw).
pub(crate) fn run(command: Command) -> ExitCode {
    finish(block_on(dispatch(command)))
}

/// Runs a client verb of `herd certificates`.
pub(crate) fn run_certificates(command: CertificatesCommand) -> ExitCode {
    finish(block_on(certificates(command)))
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("herd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn block_on(future: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(future)
}

/// A connected client: the server and token from the flags, else the environment, else the
/// stored login.
struct Session {
    api: Api,
    json: bool,
}

impl Session {
    fn open(connection: &Connection) -> anyhow::Result<Self> {
        let stored = config::load(&config::path()?)?;
        let server = connection
            .server
            .clone()
            .or_else(|| stored.as_ref().map(|s| s.server.clone()))
            .unwrap_or_else(|| DEFAULT_SERVER.to_string());
        let token = match (&connection.token, &stored) {
            (Some(token), _) => token.clone(),
            // A stored token is for the server it was stored with, never sent to another.
            (None, Some(stored)) if stored.server.trim_end_matches('/') == server.trim_end_matches('/') => {
                stored.token.clone()
            }
            (None, Some(stored)) => anyhow::bail!(
                "the stored login is for {}, not {server}; run `herd login --server {server}` or pass --token",
                stored.server
            ),
            (None, None) => anyhow::bail!("not signed in: run `herd login` (or pass --token / set HERD_TOKEN)"),
        };
        Ok(Self { api: Api::new(&server, Some(token))?, json: connection.json })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        Ok(self.api.call(method, path, query, body).await?)
    }

    /// Prints a list answer `{items, nextCursor}` as a table (and where to go on), or its JSON.
    fn print_list(&self, answer: &Value, columns: &[Column]) {
        if self.json {
            return print_json(answer);
        }
        let items = answer.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
        print!("{}", output::table(&items, columns));
        if let Some(cursor) = answer.get("nextCursor").and_then(Value::as_str) {
            eprintln!("more: --cursor {cursor}");
        }
    }

    /// Prints one record as `field  value` lines, or its JSON.
    fn print_record(&self, answer: &Value) {
        if self.json {
            print_json(answer)
        } else {
            print!("{}", output::record(answer))
        }
    }
}

fn print_json(value: &Value) {
    println!("{value}");
}

fn page_query(page: &Page) -> Vec<(&'static str, String)> {
    let mut query = Vec::new();
    if let Some(limit) = page.limit {
        query.push(("limit", limit.to_string()));
    }
    if let Some(cursor) = &page.cursor {
        query.push(("cursor", cursor.clone()));
    }
    query
}

/// An id as one URL path segment: anything but an id's characters is refused here rather than
/// sent as a different path.
fn segment(id: &str) -> anyhow::Result<&str> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        anyhow::bail!("{id:?} is not an id");
    }
    Ok(id)
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Login(args) => login(args).await,
        Command::Logout { connection } => logout(&connection).await,
        Command::Devices { connection, command } => devices(&Session::open(&connection)?, command).await,
        Command::Tokens { connection, command } => tokens(&Session::open(&connection)?, command).await,
        Command::EnrollmentTokens { connection, command } => {
            enrollment_tokens(&Session::open(&connection)?, command).await
        }
        Command::Commands { connection, command } => commands(&Session::open(&connection)?, command).await,
        Command::Rollouts { connection, command } => rollouts(&Session::open(&connection)?, command).await,
        Command::Packages { connection, command } => packages(&Session::open(&connection)?, command).await,
    }
}

async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let path = config::path()?;
    let stored = config::load(&path).ok().flatten();
    let server = args
        .connection
        .server
        .clone()
        .or_else(|| stored.as_ref().map(|s| s.server.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let (token, credential) = match (&args.username, &args.connection.token) {
        (Some(username), _) => {
            let password = read_password(args.password_stdin)?;
            let mut body = json!({ "username": username, "password": password });
            if let Some(tenant) = &args.tenant {
                body["tenant"] = json!(tenant);
            }
            let answer = Api::new(&server, None)?.call(Method::POST, "/auth/login", &[], Some(&body)).await?;
            let token = answer.get("token").and_then(Value::as_str).context("the login answer has no token")?;
            (token.to_string(), "session")
        }
        (None, Some(token)) => (token.clone(), "api"),
        (None, None) => {
            if !std::io::stdin().is_terminal() {
                anyhow::bail!("pass --token TOKEN (or HERD_TOKEN), or --username NAME to sign in with a password");
            }
            let token = rpassword::prompt_password("API token: ").context("cannot read the token")?;
            (token.trim().to_string(), "api")
        }
    };
    let api = Api::new(&server, Some(token.clone()))?;
    let me = api.call(Method::GET, "/auth/me", &[], None).await?;
    let login = config::StoredLogin { server: api.server().to_string(), token, credential: credential.into() };
    config::save(&path, &login)?;
    if args.connection.json {
        print_json(&me);
    } else {
        let role = me.get("role").and_then(Value::as_str).unwrap_or("?");
        let tenant = me.get("tenantId").and_then(Value::as_str).unwrap_or("?");
        println!("signed in to {} as {role} of tenant {tenant}; saved in {}", login.server, path.display());
    }
    Ok(())
}

/// The password from a prompt without echo, or the first line of standard input.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("cannot read the password from standard input")?;
        text.lines().next().unwrap_or("").to_string()
    } else {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("no terminal to ask for the password on: pass --password-stdin");
        }
        rpassword::prompt_password("Password: ").context("cannot read the password")?
    };
    if password.is_empty() {
        anyhow::bail!("the password is empty");
    }
    Ok(password)
}

async fn logout(connection: &Connection) -> anyhow::Result<()> {
    let path = config::path()?;
    let Some(stored) = config::load(&path)? else {
        println!("not signed in");
        return Ok(());
    };
    if stored.credential == "session" {
        // The session ends on the server; an answer of 401 means it already had.
        let api = Api::new(connection.server.as_deref().unwrap_or(&stored.server), Some(stored.token.clone()))?;
        match api.call(Method::POST, "/auth/logout", &[], None).await {
            Ok(_) => {}
            Err(api::ApiError::Problem { status, .. }) if status == reqwest::StatusCode::UNAUTHORIZED => {}
            Err(error) => eprintln!("herd: the session could not be ended on the server ({error}); forgetting it here"),
        }
    }
    config::remove(&path)?;
    println!("signed out of {}", stored.server);
    Ok(())
}

async fn devices(session: &Session, command: DevicesCommand) -> anyhow::Result<()> {
    match command {
        DevicesCommand::List { status, tag, search, page } => {
            let mut query = page_query(&page);
            query.extend(status.map(|s| ("status", s)));
            query.extend(tag.map(|t| ("tag", t)));
            query.extend(search.map(|q| ("q", q)));
            let answer = session.call(Method::GET, "/devices", &query, None).await?;
            session.print_list(&answer, DEVICE_COLUMNS);
        }
        DevicesCommand::Get { id } => {
            let answer = session.call(Method::GET, &format!("/devices/{}", segment(&id)?), &[], None).await?;
            session.print_record(&answer);
        }
        DevicesCommand::Delete { id } => {
            session.call(Method::DELETE, &format!("/devices/{}", segment(&id)?), &[], None).await?;
            if !session.json {
                println!("deleted device {id}");
            }
        }
    }
    Ok(())
}

async fn tokens(session: &Session, command: TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::Create { name, role, expires_at } => {
            let mut body = json!({ "name": name, "role": role });
            if let Some(at) = expires_at {
                body["expiresAt"] = json!(at);
            }
            let answer = session.call(Method::POST, "/tokens", &[], Some(&body)).await?;
            print_secret(session, &answer, "token");
        }
        TokensCommand::List { page } => {
            let answer = session.call(Method::GET, "/tokens", &page_query(&page), None).await?;
            session.print_list(&answer, TOKEN_COLUMNS);
        }
    }
    Ok(())
}

async fn enrollment_tokens(session: &Session, command: EnrollmentTokensCommand) -> anyhow::Result<()> {
    match command {
        EnrollmentTokensCommand::Create { name, max_uses, expires_at } => {
            let mut body = Map::new();
            if let Some(name) = name {
                body.insert("name".into(), json!(name));
            }
            if let Some(max_uses) = max_uses {
                body.insert("maxUses".into(), json!(max_uses));
            }
            if let Some(at) = expires_at {
                body.insert("expiresAt".into(), json!(at));
            }
            let answer = session.call(Method::POST, "/enrollment-tokens", &[], Some(&Value::Object(body))).await?;
            print_secret(session, &answer, "enrollmentToken");
        }
        EnrollmentTokensCommand::List { page } => {
            let answer = session.call(Method::GET, "/enrollment-tokens", &page_query(&page), None).await?;
            session.print_list(&answer, ENROLLMENT_COLUMNS);
        }
    }
    Ok(())
}

/// A created token: the record on standard error and the secret alone on standard output, so
/// that `SECRET=$(herd tokens create …)` captures just the secret.
fn print_secret(session: &Session, answer: &Value, record_field: &str) {
    if session.json {
        return print_json(answer);
    }
    if let Some(record) = answer.get(record_field) {
        eprint!("{}", output::record(record));
        eprintln!("the secret (shown once; herd keeps only its hash):");
    }
    println!("{}", answer.get("secret").and_then(Value::as_str).unwrap_or(""));
}

async fn certificates(command: CertificatesCommand) -> anyhow::Result<()> {
    match command {
        CertificatesCommand::Issue { device, csr, out_dir, connection } => {
            let session = Session::open(&connection)?;
            let body = match csr {
                Some(path) => {
                    let pem =
                        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                    Some(json!({ "csr": pem }))
                }
                None => None,
            };
            let path = format!("/devices/{}/certificates", segment(&device)?);
            let answer = session.call(Method::POST, &path, &[], body.as_ref()).await?;
            if session.json {
                print_json(&answer);
            } else if let Some(dir) = out_dir {
                write_bundle(&dir, &answer)?;
                print!("{}", output::record(answer.get("certificate").unwrap_or(&Value::Null)));
                println!("written to {}", dir.display());
            } else {
                print!("{}", output::record(answer.get("certificate").unwrap_or(&Value::Null)));
                for field in ["certificatePem", "privateKeyPem", "caCertificatePem"] {
                    if let Some(pem) = answer.get(field).and_then(Value::as_str) {
                        print!("\n{pem}");
                    }
                }
            }
        }
        CertificatesCommand::Revoke { id, reason, connection } => {
            let session = Session::open(&connection)?;
            let path = format!("/certificates/{}/revoke", segment(&id)?);
            let answer = session.call(Method::POST, &path, &[], Some(&json!({ "reason": reason }))).await?;
            session.print_record(&answer);
        }
        CertificatesCommand::List { device, status, expiring_within_days, page, connection } => {
            let session = Session::open(&connection)?;
            let mut query = page_query(&page);
            query.extend(device.map(|d| ("deviceId", d)));
            query.extend(status.map(|s| ("status", s)));
            query.extend(expiring_within_days.map(|d| ("expiringWithinDays", d.to_string())));
            let answer = session.call(Method::GET, "/certificates", &query, None).await?;
            session.print_list(&answer, CERTIFICATE_COLUMNS);
        }
        CertificatesCommand::Get { id, connection } => {
            let session = Session::open(&connection)?;
            let answer = session.call(Method::GET, &format!("/certificates/{}", segment(&id)?), &[], None).await?;
            session.print_record(&answer);
        }
    }
    Ok(())
}

/// Writes an issued bundle's PEM files; the private key (if the server made one) 0600.
fn write_bundle(dir: &std::path::Path, bundle: &Value) -> anyhow::Result<()> {
    let files = [
        ("certificatePem", "certificate.pem", 0o644),
        ("caCertificatePem", "ca.pem", 0o644),
        ("privateKeyPem", "private-key.pem", 0o600),
    ];
    for (field, name, mode) in files {
        if let Some(pem) = bundle.get(field).and_then(Value::as_str) {
            crate::files::write_atomically(&dir.join(name), pem.as_bytes(), mode)?;
        }
    }
    Ok(())
}

async fn commands(session: &Session, command: CommandsCommand) -> anyhow::Result<()> {
    match command {
        CommandsCommand::Send { device, command_type, payload, timeout_seconds } => {
            let mut body = json!({ "type": command_type });
            if let Some(payload) = payload {
                let payload: Value = serde_json::from_str(&payload).context("--payload is not JSON")?;
                body["payload"] = payload;
            }
            if let Some(timeout) = timeout_seconds {
                body["timeoutSeconds"] = json!(timeout);
            }
            let path = format!("/devices/{}/commands", segment(&device)?);
            let answer = session.call(Method::POST, &path, &[], Some(&body)).await?;
            session.print_record(&answer);
        }
        CommandsCommand::Get { device, command } => {
            let path = format!("/devices/{}/commands/{}", segment(&device)?, segment(&command)?);
            let answer = session.call(Method::GET, &path, &[], None).await?;
            session.print_record(&answer);
        }
        CommandsCommand::List { device, page } => {
            let path = format!("/devices/{}/commands", segment(&device)?);
            let answer = session.call(Method::GET, &path, &page_query(&page), None).await?;
            session.print_list(&answer, COMMAND_COLUMNS);
        }
    }
    Ok(())
}

async fn rollouts(session: &Session, command: RolloutsCommand) -> anyhow::Result<()> {
    let (path, body) = match command {
        RolloutsCommand::List { state, page } => {
            let mut query = page_query(&page);
            query.extend(state.map(|s| ("state", s)));
            let answer = session.call(Method::GET, "/rollouts", &query, None).await?;
            session.print_list(&answer, ROLLOUT_COLUMNS);
            return Ok(());
        }
        RolloutsCommand::Get { id } => {
            let answer = session.call(Method::GET, &format!("/rollouts/{}", segment(&id)?), &[], None).await?;
            session.print_record(&answer);
            return Ok(());
        }
        RolloutsCommand::Create {
            package,
            name,
            tag,
            model,
            devices,
            all,
            waves,
            soak_seconds,
            failure_threshold,
            allow_downgrade,
            start,
        } => {
            let target = match (tag, model, devices.is_empty(), all) {
                (Some(tag), ..) => json!({ "tag": tag }),
                (None, Some(model), ..) => json!({ "model": model }),
                (None, None, false, _) => json!({ "deviceIds": devices }),
                (None, None, true, true) => json!({ "all": true }),
                (None, None, true, false) => anyhow::bail!("name the devices: --tag, --model, --device ID or --all"),
            };
            let mut body =
                json!({ "packageId": package, "target": target, "allowDowngrade": allow_downgrade, "start": start });
            if let Some(name) = name {
                body["name"] = json!(name);
            }
            if !waves.is_empty() {
                body["waves"] = json!(waves);
            }
            if let Some(soak) = soak_seconds {
                body["soakSeconds"] = json!(soak);
            }
            if let Some(threshold) = failure_threshold {
                body["failureThreshold"] = json!(threshold);
            }
            ("/rollouts".to_string(), Some(body))
        }
        RolloutsCommand::Start { id } => (format!("/rollouts/{}/start", segment(&id)?), None),
        RolloutsCommand::Pause { id, reason } => {
            (format!("/rollouts/{}/pause", segment(&id)?), reason.map(|r| json!({ "reason": r })))
        }
        RolloutsCommand::Resume { id } => (format!("/rollouts/{}/resume", segment(&id)?), None),
        RolloutsCommand::Cancel { id } => (format!("/rollouts/{}/cancel", segment(&id)?), None),
    };
    let answer = session.call(Method::POST, &path, &[], body.as_ref()).await?;
    session.print_record(&answer);
    Ok(())
}

async fn packages(session: &Session, command: PackagesCommand) -> anyhow::Result<()> {
    match command {
        PackagesCommand::List { page } => {
            let answer = session.call(Method::GET, "/packages", &page_query(&page), None).await?;
            session.print_list(&answer, PACKAGE_COLUMNS);
        }
        PackagesCommand::Upload { file, kind, name, version, version_code, target_models, notes, content_type } => {
            let opened =
                tokio::fs::File::open(&file).await.with_context(|| format!("cannot open {}", file.display()))?;
            let length = opened.metadata().await?.len();
            let mut query =
                vec![("kind", kind), ("name", name), ("version", version), ("versionCode", version_code.to_string())];
            query.extend(target_models.map(|m| ("targetModels", m)));
            query.extend(notes.map(|n| ("notes", n)));
            // Streamed in 64 KiB pieces: a package may be far larger than memory.
            let stream = futures::stream::try_unfold(opened, |mut file| async move {
                use tokio::io::AsyncReadExt;
                let mut buffer = vec![0u8; 64 * 1024];
                let n = file.read(&mut buffer).await?;
                buffer.truncate(n);
                Ok::<_, std::io::Error>((n > 0).then(|| (bytes::Bytes::from(buffer), file)))
            });
            let request = session
                .api
                .request(Method::POST, "/packages")
                .query(&query)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .header(reqwest::header::CONTENT_LENGTH, length)
                .body(reqwest::Body::wrap_stream(stream));
            let answer = session.api.send(request).await?;
            session.print_record(&answer);
        }
    }
    std::io::stdout().flush().ok();
    Ok(())
}
