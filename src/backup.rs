//! `herd backup DIR` and `herd restore DIR`: the database, the CA, the key-encryption key and
//! the blobs as one set, with a `manifest.json` that says what each file is and its SHA-256.
//!
//! The three belong together: the database's certificates were signed by the CA (and the
//! database pins the CA's fingerprint), and its sealed private keys open only with the `kek`.
//! A backup copies them while a server runs (SQLite `VACUUM INTO` reads one snapshot; PostgreSQL
//! is dumped by `pg_dump`), and a restore checks the whole set before it writes anything: every
//! checksum, the CA key against the CA certificate and the database's pin, the `kek` against a
//! key sealed in the database, and the schema version against this build.
//!
//! This module talks to the database only through `herd_store::backup`, and never writes to
//! the database it backs up. See docs/backup.md for the procedures.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::redact;
use crate::clock::{Clock, SystemClock};
use crate::config::{BlobStoreSettings, Settings};
use crate::store::{backup as store, Db, Engine};

/// What `herd backup` copies besides the database.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The directory to write; it must be missing or empty.
    pub dir: PathBuf,
    /// Leave `<data-dir>/blobs` (packages, screenshots) out of the set.
    pub without_blobs: bool,
}

/// How `herd restore` treats what is already there.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The backup to restore.
    pub dir: PathBuf,
    /// Replace an existing database and data directory instead of refusing.
    pub force: bool,
}

/// The version of the manifest's layout; a restore refuses any other.
const MANIFEST_FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
const SQLITE_FILE: &str = "database/herd.db";
const PG_DUMP_FILE: &str = "database/herd.pgdump";
const CA_KEY: &str = "certificates/ca-key.pem";
const CA_CERT: &str = "certificates/ca-cert.pem";
const KEK: &str = "kek";
const ADMIN_TOKEN_FILE: &str = "initial-admin-token";
/// Progress is printed after this many blob files (and at the end).
const PROGRESS_EVERY: usize = 200;

/// `manifest.json`: what the set holds and how to check it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    format: u32,
    herd_version: String,
    /// `sqlite` or `postgresql`.
    engine: String,
    /// The newest migration the database had.
    schema_version: i64,
    /// When the backup started (RFC 3339, UTC).
    created_at: String,
    /// The database's file in the set, `None` when it could not be dumped (no `pg_dump`).
    database: Option<String>,
    /// `data-dir` (`<data-dir>/kek`), `setting` (`HERD_KEY_ENCRYPTION_KEY`), or `None`.
    kek_source: Option<String>,
    /// `included`, `excluded` (`--without-blobs`) or `s3` (in the bucket, not copied).
    blobs: String,
    /// The SHA-256 fingerprint of the CA certificate in the set.
    ca_fingerprint: String,
    /// The CA fingerprint the database is pinned to, if any.
    database_ca_fingerprint: Option<String>,
    /// A key sealed under the `kek` in the database, to prove the `kek` against.
    kek_probe: Option<KekProbe>,
    /// Every file of the set but the manifest.
    files: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KekProbe {
    certificate_id: String,
    /// Base64, as stored.
    sealed: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileEntry {
    /// Relative to the backup directory, `/`-separated.
    path: String,
    size: u64,
    sha256: String,
}

/// Takes a backup of the running (or stopped) instance that `settings` describe into an empty
/// directory. On PostgreSQL without `pg_dump`, the files are still copied and the error says
/// the set is incomplete and how to dump the database by hand.
pub async fn backup(settings: &Settings, options: &BackupOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = &options.dir;
    ensure_empty_dir(dir)?;
    let (ca_key, ca_cert) = crate::certificates::authority::paths(&settings.data_dir);
    if !ca_key.exists() || !ca_cert.exists() {
        bail!(
            "{} has no CA ({} and {}); point --data-dir (HERD_DATA_DIR) at the server's data directory",
            settings.data_dir.display(),
            ca_cert.display(),
            ca_key.display()
        );
    }
    let engine = if settings.is_postgres() { Engine::Postgres } else { Engine::Sqlite };
    if engine == Engine::Sqlite {
        match crate::files::sqlite_file(&settings.database_url) {
            Some(path) if path.is_file() => {}
            _ => bail!("there is no SQLite database at {}", redact(&settings.database_url)),
        }
    }
    let (db, _system) = Db::open(&settings.database_url)
        .await
        .with_context(|| format!("cannot open the database {}", redact(&settings.database_url)))?;
    let result = backup_with(&db, engine, settings, options).await;
    db.close().await;
    let summary = result?;
    println!("{summary}");
    eprintln!("backup finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Restores a backup into the data directory and database that `settings` describe, after
/// checking the whole set. Nothing is written unless every check passes.
pub async fn restore(settings: &Settings, options: &RestoreOptions) -> anyhow::Result<()> {
    let dir = &options.dir;
    let manifest = read_manifest(dir)?;
    eprintln!(
        "checking the backup of {} (herd {}, {} schema {})",
        manifest.created_at, manifest.herd_version, manifest.engine, manifest.schema_version
    );
    let engine = if settings.is_postgres() { Engine::Postgres } else { Engine::Sqlite };
    let checked = check_set(dir, &manifest, engine, settings)?;
    eprintln!(
        "every file matches its checksum; the CA key, the CA certificate, the database and the kek belong together"
    );

    let target = check_target(settings, engine, &manifest, options.force).await?;
    let pg_restore = match engine {
        Engine::Postgres => Some(find_program("pg_restore").context(
            "pg_restore is not on PATH: install the PostgreSQL client tools (the server's major version) and run `herd restore` again; nothing was changed",
        )?),
        Engine::Sqlite => None,
    };

    // The database first: it is the step most likely to fail, and files follow only if it
    // succeeded.
    let database = checked.database.clone();
    match (&target, pg_restore) {
        (Target::Sqlite(path), _) => {
            eprintln!("restoring the database to {}", path.display());
            if options.force {
                for suffix in ["-wal", "-shm", "-journal"] {
                    remove_if_present(&with_suffix(path, suffix))?;
                }
            }
            copy_file(&dir.join(&database), path, 0o600)?;
        }
        (Target::Postgres, Some(pg_restore)) => {
            eprintln!("restoring the database with pg_restore into {}", redact(&settings.database_url));
            let (url, password) = libpq_target(&settings.database_url);
            let mut command = Command::new(pg_restore);
            command.args(["--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]);
            if options.force {
                command.args(["--clean", "--if-exists"]);
            }
            command.arg(format!("--dbname={url}")).arg(dir.join(&database));
            if let Some(password) = password {
                command.env("PGPASSWORD", password);
            }
            run(command, "pg_restore")?;
        }
        (Target::Postgres, None) => unreachable!("pg_restore is looked up for PostgreSQL"),
    }

    let data_dir = &settings.data_dir;
    crate::files::create_private_dir(data_dir)?;
    if options.force {
        remove_tree_if_present(&data_dir.join("certificates"))?;
        if manifest.blobs == "included" {
            remove_tree_if_present(&data_dir.join("blobs"))?;
        }
    }
    let mut restored = 0usize;
    for entry in &manifest.files {
        if entry.path == database || entry.path == KEK {
            continue;
        }
        let mode = if entry.path.ends_with("-cert.pem") { 0o644 } else { 0o600 };
        copy_file(&dir.join(&entry.path), &data_dir.join(&entry.path), mode)?;
        restored += 1;
        if restored.is_multiple_of(PROGRESS_EVERY) {
            eprintln!("restored {restored} of {} files", manifest.files.len());
        }
    }
    match (&checked.kek, &settings.key_encryption_key) {
        (Some(_), Some(_)) => eprintln!(
            "the kek is HERD_KEY_ENCRYPTION_KEY (checked equal to the backup's); not written to the data directory"
        ),
        (Some(_), None) => {
            copy_file(&dir.join(KEK), &data_dir.join(KEK), 0o600)?;
        }
        (None, _) => {}
    }
    crate::files::secure_sqlite_files(&settings.database_url)?;
    println!(
        "restored the backup of {} into {} and {}: database (schema {}), CA, {}, {} other files{}",
        manifest.created_at,
        data_dir.display(),
        redact(&settings.database_url),
        manifest.schema_version,
        if checked.kek.is_some() { "kek" } else { "no kek (none was backed up)" },
        restored,
        match manifest.blobs.as_str() {
            "included" => "",
            "excluded" => "; blobs were not in this backup (--without-blobs)",
            _ => "; blobs are in the S3 bucket and were not part of the backup",
        }
    );
    println!("start herd on this data directory and database; it applies any newer migrations itself");
    Ok(())
}

/// What a backup wrote, as printed at the end.
struct Summary {
    dir: PathBuf,
    lines: Vec<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "backup written to {}:", self.dir.display())?;
        for line in &self.lines {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

async fn backup_with(db: &Db, engine: Engine, settings: &Settings, options: &BackupOptions) -> anyhow::Result<Summary> {
    let dir = &options.dir;
    let created_at = SystemClock.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let schema_version = store::schema_version(db).await?.context(
        "the database has no migrations applied: there is nothing to back up (start herd or run `herd migrate` first)",
    )?;
    let known = store::known_schema_version(engine);
    if schema_version > known {
        bail!("the database is at schema {schema_version}, newer than this herd knows ({known}); back it up with the herd that serves it");
    }
    let database_ca_fingerprint = crate::certificates::store::pinned_ca(db).await?;
    let kek_probe =
        store::sealed_key_sample(db).await?.map(|(certificate_id, sealed)| KekProbe { certificate_id, sealed });
    let mut lines = Vec::new();
    let mut files = Vec::new();

    // 1. The database: one consistent snapshot.
    let step = Instant::now();
    let database = match engine {
        Engine::Sqlite => {
            eprintln!("database: copying a consistent snapshot of the SQLite database (VACUUM INTO)");
            let target = dir.join(SQLITE_FILE);
            crate::files::create_private_dir(target.parent().unwrap_or(dir))?;
            store::snapshot_sqlite_into(db, &target).await.context("the SQLite snapshot failed")?;
            restrict(&target, 0o600)?;
            let entry = entry_for(dir, SQLITE_FILE)?;
            lines.push(format!(
                "database: SQLite snapshot (VACUUM INTO), {}, schema {schema_version}, in {:.1} s",
                human_size(entry.size),
                step.elapsed().as_secs_f64()
            ));
            files.push(entry);
            Some(SQLITE_FILE.to_string())
        }
        Engine::Postgres => match find_program("pg_dump") {
            Some(pg_dump) => {
                eprintln!("database: running pg_dump (custom format)");
                let target = dir.join(PG_DUMP_FILE);
                crate::files::create_private_dir(target.parent().unwrap_or(dir))?;
                let (url, password) = libpq_target(&settings.database_url);
                let mut command = Command::new(pg_dump);
                command.args(["--format=custom", "--no-owner", "--no-privileges"]);
                command.arg(format!("--file={}", target.display())).arg(format!("--dbname={url}"));
                if let Some(password) = password {
                    command.env("PGPASSWORD", password);
                }
                run(command, "pg_dump")?;
                restrict(&target, 0o600)?;
                let entry = entry_for(dir, PG_DUMP_FILE)?;
                lines.push(format!(
                    "database: PostgreSQL dump by pg_dump (custom format), {}, schema {schema_version}, in {:.1} s",
                    human_size(entry.size),
                    step.elapsed().as_secs_f64()
                ));
                files.push(entry);
                Some(PG_DUMP_FILE.to_string())
            }
            None => {
                lines.push("database: NOT backed up: pg_dump is not on PATH".to_string());
                None
            }
        },
    };

    // 2. The CA, the file key store and the first admin token.
    let data_dir = &settings.data_dir;
    let mut copied = Vec::new();
    copy_tree(&data_dir.join("certificates"), dir, "certificates", &mut copied, None)?;
    if data_dir.join(ADMIN_TOKEN_FILE).is_file() {
        copied.push(copy_into_set(data_dir, dir, ADMIN_TOKEN_FILE)?);
    }
    let ca = crate::certificates::authority::load(&dir.join(CA_KEY), &dir.join(CA_CERT))
        .context("the CA files in the data directory do not load")?;
    let ca_fingerprint = ca.info().fingerprint_sha256;
    lines.push(format!(
        "CA: {CA_CERT} and {CA_KEY} (SHA-256 {ca_fingerprint}); {} certificate-store and token files in all",
        copied.len()
    ));
    files.append(&mut copied);

    // 3. The key-encryption key, wherever it is configured.
    let kek_source = match &settings.key_encryption_key {
        Some(secret) => {
            let kek = crate::certificates::vault::parse_kek(secret.expose())
                .context("HERD_KEY_ENCRYPTION_KEY must be 64 hex characters (32 bytes)")?;
            write_new(&dir.join(KEK), hex::encode(kek).as_bytes(), 0o600)?;
            files.push(entry_for(dir, KEK)?);
            lines.push("kek: from HERD_KEY_ENCRYPTION_KEY, written to kek (keep it with the set)".to_string());
            Some("setting".to_string())
        }
        None if data_dir.join(KEK).is_file() => {
            files.push(copy_into_set(data_dir, dir, KEK)?);
            lines.push("kek: <data-dir>/kek".to_string());
            Some("data-dir".to_string())
        }
        None => {
            lines.push("kek: none (no key is sealed in the database)".to_string());
            None
        }
    };
    if let (Some(probe), Some(_)) = (&kek_probe, &kek_source) {
        let kek = read_kek(&dir.join(KEK))?;
        open_probe(&kek, probe).context("the configured kek does not open the keys in this database")?;
    } else if kek_probe.is_some() {
        bail!("the database holds sealed private keys but there is no kek (HERD_KEY_ENCRYPTION_KEY or <data-dir>/kek)");
    }

    // 4. The blobs, after the database: every blob the snapshot refers to is already written.
    let blobs = match (&settings.blob_store, options.without_blobs) {
        (BlobStoreSettings::S3(s3), _) => {
            lines.push(format!(
                "blobs: in the S3 bucket {}, not copied (use the bucket's versioning or replication)",
                s3.bucket
            ));
            "s3"
        }
        (BlobStoreSettings::File, true) => {
            lines.push(
                "blobs: left out (--without-blobs); packages and screenshots must be copied separately".to_string(),
            );
            "excluded"
        }
        (BlobStoreSettings::File, false) => {
            eprintln!("blobs: copying {}", data_dir.join("blobs").display());
            let step = Instant::now();
            let mut blobs = Vec::new();
            let mut progress = BlobProgress::default();
            copy_tree(&data_dir.join("blobs"), dir, "blobs", &mut blobs, Some(&mut progress))?;
            let bytes: u64 = blobs.iter().map(|entry| entry.size).sum();
            lines.push(format!(
                "blobs: {} files, {} (use --without-blobs to leave them out), in {:.1} s",
                blobs.len(),
                human_size(bytes),
                step.elapsed().as_secs_f64()
            ));
            files.append(&mut blobs);
            "included"
        }
    };

    // 5. The manifest last: a directory without one is an unfinished backup.
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        herd_version: env!("CARGO_PKG_VERSION").to_string(),
        engine: engine_name(engine).to_string(),
        schema_version,
        created_at,
        database: database.clone(),
        kek_source,
        blobs: blobs.to_string(),
        ca_fingerprint,
        database_ca_fingerprint,
        kek_probe,
        files,
    };
    let text = serde_json::to_vec_pretty(&manifest)?;
    write_new(&dir.join(MANIFEST), &text, 0o600)?;
    lines.push(format!("manifest.json: {} files with their SHA-256 and size", manifest.files.len()));
    if database.is_none() {
        let (url, _) = libpq_target(&settings.database_url);
        bail!(
            "{}\nthe backup in {} is INCOMPLETE: pg_dump is not on PATH, so the database was not dumped (the CA, kek and files were copied).\n\
             Install the PostgreSQL client tools (the server's major version) and run `herd backup` again into an empty directory, \
             or dump the database yourself at the same time and keep the dump with this directory:\n  \
             pg_dump --format=custom --no-owner --no-privileges --file={}/herd.pgdump --dbname='{}'  (the password from PGPASSWORD or ~/.pgpass)",
            Summary { dir: dir.clone(), lines }.to_string().trim_end(),
            dir.display(),
            dir.display(),
            url
        );
    }
    Ok(Summary { dir: dir.clone(), lines })
}

/// What `check_set` proved and restore needs.
struct CheckedSet {
    database: String,
    kek: Option<[u8; 32]>,
}

fn read_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} has no {MANIFEST}: it is not a herd backup, or the backup did not finish; nothing was changed",
            dir.display()
        ),
        Err(error) => return Err(anyhow::Error::new(error).context(format!("cannot read {}", path.display()))),
    };
    let manifest: Manifest = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a herd backup manifest; nothing was changed", path.display()))?;
    if manifest.format != MANIFEST_FORMAT {
        bail!(
            "{} has format {}, this herd reads format {MANIFEST_FORMAT}; restore it with the herd that wrote it ({}); nothing was changed",
            path.display(),
            manifest.format,
            manifest.herd_version
        );
    }
    Ok(manifest)
}

/// Every check that needs only the set and the settings.
fn check_set(dir: &Path, manifest: &Manifest, engine: Engine, settings: &Settings) -> anyhow::Result<CheckedSet> {
    let refuse =
        |problem: String| anyhow::anyhow!("refusing to restore {}: {problem}; nothing was changed", dir.display());
    if manifest.engine != engine_name(engine) {
        return Err(refuse(format!(
            "it is a {} backup but the configured database is {} ({})",
            manifest.engine,
            engine_name(engine),
            redact(&settings.database_url)
        )));
    }
    let known = store::known_schema_version(engine);
    if manifest.schema_version > known {
        return Err(refuse(format!(
            "the database is at schema {}, newer than this herd knows ({known}); restore it with herd {} or newer",
            manifest.schema_version, manifest.herd_version
        )));
    }
    let Some(database) = manifest.database.clone() else {
        return Err(refuse("the backup holds no database (pg_dump was missing when it was taken)".to_string()));
    };

    // Every listed file is there, with its size and digest; nothing else is.
    let mut problems = Vec::new();
    let mut listed = BTreeSet::new();
    for entry in &manifest.files {
        if !is_safe_relative(&entry.path) {
            problems.push(format!("{}: not a path inside the backup", entry.path));
            continue;
        }
        listed.insert(entry.path.clone());
        let path = dir.join(&entry.path);
        match hash_file(&path) {
            Ok((size, sha256)) if size == entry.size && sha256 == entry.sha256 => {}
            Ok((size, _)) if size != entry.size => {
                problems.push(format!("{}: {size} bytes, the manifest says {}", entry.path, entry.size))
            }
            Ok(_) => {
                problems.push(format!("{}: its SHA-256 does not match the manifest (the file was altered)", entry.path))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                problems.push(format!("{}: missing", entry.path))
            }
            Err(error) => problems.push(format!("{}: cannot be read ({error})", entry.path)),
        }
    }
    for required in [database.as_str(), CA_KEY, CA_CERT] {
        if !listed.contains(required) {
            problems.push(format!("{required}: not in the manifest (the set is incomplete)"));
        }
    }
    if manifest.kek_source.is_some() && !listed.contains(KEK) {
        problems.push(format!("{KEK}: not in the manifest (the set is incomplete)"));
    }
    let mut present = Vec::new();
    list_files(dir, "", &mut present).with_context(|| format!("cannot read {}", dir.display()))?;
    for path in present {
        if path != MANIFEST && !listed.contains(&path) {
            problems.push(format!("{path}: not in the manifest (the set was changed after the backup)"));
        }
    }
    if !problems.is_empty() {
        return Err(refuse(format!("the set does not match its manifest:\n  {}", problems.join("\n  "))));
    }

    // The CA key belongs to the certificate, and the certificate to the database.
    let ca = crate::certificates::authority::load(&dir.join(CA_KEY), &dir.join(CA_CERT))
        .map_err(|error| refuse(format!("{error:#}")))?;
    let fingerprint = ca.info().fingerprint_sha256;
    if fingerprint != manifest.ca_fingerprint {
        return Err(refuse(format!(
            "the CA certificate (SHA-256 {fingerprint}) is not the one the manifest names ({})",
            manifest.ca_fingerprint
        )));
    }
    if let Some(pinned) = &manifest.database_ca_fingerprint {
        if *pinned != fingerprint {
            return Err(refuse(format!(
                "the database's certificates were issued by the CA {pinned}, but the set's CA is {fingerprint}"
            )));
        }
    }

    // The kek opens the database's sealed keys, and matches a configured one.
    let kek = if listed.contains(KEK) {
        Some(read_kek(&dir.join(KEK)).map_err(|error| refuse(format!("{error:#}")))?)
    } else {
        None
    };
    if let (Some(kek), Some(configured)) = (&kek, &settings.key_encryption_key) {
        let configured = crate::certificates::vault::parse_kek(configured.expose())
            .context("HERD_KEY_ENCRYPTION_KEY must be 64 hex characters (32 bytes)")?;
        if configured != *kek {
            return Err(refuse(
                "HERD_KEY_ENCRYPTION_KEY is set and differs from the backup's kek; unset it (the backup's kek is then written to <data-dir>/kek) or set it to the backup's".to_string(),
            ));
        }
    }
    if let Some(probe) = &manifest.kek_probe {
        let Some(kek) = &kek else {
            return Err(refuse("the database holds sealed private keys but the set has no kek".to_string()));
        };
        open_probe(kek, probe).map_err(|_| {
            refuse(format!(
                "the kek does not open the private keys sealed in the database (certificate {}): it belongs to another installation",
                probe.certificate_id
            ))
        })?;
    }
    Ok(CheckedSet { database, kek })
}

/// Where the database goes.
enum Target {
    Sqlite(PathBuf),
    Postgres,
}

/// Refuses a data directory or database that already holds something, unless `force`.
async fn check_target(settings: &Settings, engine: Engine, manifest: &Manifest, force: bool) -> anyhow::Result<Target> {
    let data_dir = &settings.data_dir;
    let mut occupied = Vec::new();
    for name in ["certificates", KEK, "blobs"] {
        let path = data_dir.join(name);
        if path.is_file() || (path.is_dir() && !is_empty_dir(&path)?) {
            occupied.push(path.display().to_string());
        }
    }
    let target = match engine {
        Engine::Sqlite => {
            let path = crate::files::sqlite_file(&settings.database_url)
                .context("restore needs an SQLite database on disk (sqlite://PATH)")?;
            if std::fs::metadata(&path).map(|m| m.len() > 0).unwrap_or(false) {
                occupied.push(path.display().to_string());
            }
            Target::Sqlite(path)
        }
        Engine::Postgres => {
            let (db, _system) = Db::open(&settings.database_url)
                .await
                .with_context(|| format!("cannot open the database {}", redact(&settings.database_url)))?;
            let empty = store::is_empty(&db).await;
            db.close().await;
            if !empty? {
                occupied.push(format!("the database {}", redact(&settings.database_url)));
            }
            Target::Postgres
        }
    };
    if !occupied.is_empty() {
        if !force {
            bail!(
                "refusing to restore over existing data (use --force to replace it); nothing was changed:\n  {}",
                occupied.join("\n  ")
            );
        }
        eprintln!("--force: replacing {}", occupied.join(", "));
    }
    if manifest.blobs == "included" && matches!(settings.blob_store, BlobStoreSettings::S3(_)) {
        eprintln!("note: the backup's blobs are restored to <data-dir>/blobs, but this server is configured for S3");
    }
    Ok(target)
}

fn engine_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Sqlite => "sqlite",
        Engine::Postgres => "postgresql",
    }
}

fn read_kek(path: &Path) -> anyhow::Result<[u8; 32]> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    crate::certificates::vault::parse_kek(&text)
        .with_context(|| format!("{} must hold 64 hex characters", path.display()))
}

fn open_probe(kek: &[u8; 32], probe: &KekProbe) -> anyhow::Result<()> {
    let sealed = base64::engine::general_purpose::STANDARD.decode(&probe.sealed)?;
    herd_pki::sealing::open(kek, &sealed, probe.certificate_id.as_bytes())?;
    Ok(())
}

/// Creates `dir` (0700) or accepts an existing empty one.
fn ensure_empty_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            bail!("{} exists and is not a directory", dir.display());
        }
        if !is_empty_dir(dir)? {
            bail!(
                "refusing to write into {}: it is not empty (a backup goes into a new or empty directory)",
                dir.display()
            );
        }
    }
    crate::files::create_private_dir(dir)
}

fn is_empty_dir(dir: &Path) -> anyhow::Result<bool> {
    Ok(std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?.next().is_none())
}

/// A relative, `/`-separated path with no `..`, so a manifest cannot name a file outside.
fn is_safe_relative(path: &str) -> bool {
    !path.is_empty() && Path::new(path).components().all(|component| matches!(component, Component::Normal(_)))
}

/// Files under `dir/relative`, as `/`-separated paths relative to `dir`.
fn list_files(dir: &Path, relative: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    let here = if relative.is_empty() { dir.to_path_buf() } else { dir.join(relative) };
    for entry in std::fs::read_dir(&here)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = if relative.is_empty() { name } else { format!("{relative}/{name}") };
        if entry.file_type()?.is_dir() {
            list_files(dir, &path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Progress of the blob copy, printed every [`PROGRESS_EVERY`] files.
#[derive(Default)]
struct BlobProgress {
    files: usize,
    bytes: u64,
}

/// Copies the files under `source` into `set/prefix`, skipping herd's temporary files (a
/// leading `.`: `write_atomically`'s `.name.tmp` files, the blob store's `.tmp` directory).
fn copy_tree(
    source: &Path,
    set: &Path,
    prefix: &str,
    out: &mut Vec<FileEntry>,
    mut progress: Option<&mut BlobProgress>,
) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(source) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(anyhow::Error::new(error).context(format!("cannot read {}", source.display()))),
    };
    let mut entries: Vec<_> = entries.collect::<Result<_, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let relative = format!("{prefix}/{name}");
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), set, &relative, out, progress.as_deref_mut())?;
        } else if kind.is_file() {
            let (size, sha256) = match copy_file(&entry.path(), &set.join(&relative), 0o600) {
                Ok(copied) => copied,
                // Deleted while we copied (a package removed, a key superseded): the snapshot
                // may still name it, but there is nothing to copy.
                Err(error) if is_not_found(&error) => {
                    eprintln!("warning: {} disappeared during the backup", entry.path().display());
                    continue;
                }
                Err(error) => return Err(error),
            };
            out.push(FileEntry { path: relative, size, sha256 });
            if let Some(progress) = progress.as_deref_mut() {
                progress.files += 1;
                progress.bytes += size;
                if progress.files.is_multiple_of(PROGRESS_EVERY) {
                    eprintln!("blobs: {} files, {} so far", progress.files, human_size(progress.bytes));
                }
            }
        }
    }
    Ok(())
}

fn is_not_found(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .or_else(|| error.root_cause().downcast_ref::<std::io::Error>())
        .is_some_and(|error| error.kind() == std::io::ErrorKind::NotFound)
}

fn copy_into_set(data_dir: &Path, set: &Path, name: &str) -> anyhow::Result<FileEntry> {
    let (size, sha256) = copy_file(&data_dir.join(name), &set.join(name), 0o600)?;
    Ok(FileEntry { path: name.to_string(), size, sha256 })
}

fn entry_for(set: &Path, relative: &str) -> anyhow::Result<FileEntry> {
    let path = set.join(relative);
    let (size, sha256) = hash_file(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(FileEntry { path: relative.to_string(), size, sha256 })
}

/// Copies `from` to `to` through a temporary file, fsync and rename, in bounded memory;
/// answers the size and SHA-256 of what was copied.
fn copy_file(from: &Path, to: &Path, mode: u32) -> anyhow::Result<(u64, String)> {
    let dir = to.parent().unwrap_or(Path::new("."));
    crate::files::create_private_dir(dir)?;
    let mut source = std::fs::File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
    let name = to.file_name().and_then(|name| name.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| -> anyhow::Result<(u64, String)> {
        let mut target = crate::files::create_new(&tmp, mode)?;
        let (mut hasher, mut size, mut buffer) = (Sha256::new(), 0u64, vec![0u8; 64 * 1024]);
        loop {
            let n = source.read(&mut buffer).with_context(|| format!("cannot read {}", from.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            target.write_all(&buffer[..n]).with_context(|| format!("cannot write {}", tmp.display()))?;
            size += n as u64;
        }
        target.sync_all()?;
        std::fs::rename(&tmp, to).with_context(|| format!("cannot write {}", to.display()))?;
        Ok((size, hex::encode(hasher.finalize())))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes a new file (refusing to replace one) with `mode`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = crate::files::create_new(path, mode)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

fn restrict(path: &Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let (mut hasher, mut size, mut buffer) = (Sha256::new(), 0u64, vec![0u8; 64 * 1024]);
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok((size, hex::encode(hasher.finalize())));
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(anyhow::Error::new(error).context(format!("cannot remove {}", path.display()))),
    }
}

fn remove_tree_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(anyhow::Error::new(error).context(format!("cannot remove {}", path.display()))),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut text = path.as_os_str().to_owned();
    text.push(suffix);
    PathBuf::from(text)
}

/// The program's path if it is on `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// Runs a client tool; its own error output is shown as it comes.
fn run(mut command: Command, name: &str) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("cannot run {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status}); see its message above");
    }
    Ok(())
}

/// The URL for libpq without its password, and the password (percent-decoded) for
/// `PGPASSWORD`, so it never shows in the process list.
fn libpq_target(url: &str) -> (String, Option<String>) {
    let (Some(scheme), Some(at)) = (url.find("://"), url.rfind('@')) else { return (url.to_string(), None) };
    if at < scheme {
        return (url.to_string(), None);
    }
    let userinfo = &url[scheme + 3..at];
    match userinfo.split_once(':') {
        Some((user, password)) => {
            (format!("{}{}{}", &url[..scheme + 3], user, &url[at..]), Some(percent_decode(password)))
        }
        None => (url.to_string(), None),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_leave_the_url_for_pgpassword() {
        assert_eq!(
            libpq_target("postgres://herd:p%40ss@127.0.0.1:5432/herd?sslmode=disable"),
            ("postgres://herd@127.0.0.1:5432/herd?sslmode=disable".to_string(), Some("p@ss".to_string()))
        );
        assert_eq!(
            libpq_target("postgres://postgres@127.0.0.1/test"),
            ("postgres://postgres@127.0.0.1/test".to_string(), None)
        );
    }

    #[test]
    fn manifest_paths_stay_inside_the_set() {
        assert!(is_safe_relative("certificates/ca-key.pem"));
        assert!(!is_safe_relative("../etc/passwd"));
        assert!(!is_safe_relative("/etc/passwd"));
        assert!(!is_safe_relative("certificates/../../x"));
        assert!(!is_safe_relative(""));
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
