//! herd's CA on disk: `<data-dir>/certificates/ca-key.pem` (0600) and `ca-cert.pem`, generated
//! on first start (or by `herd ca init`) and loaded on every later start; and the pin that ties a
//! database to one CA, so instances sharing a PostgreSQL database cannot sign with different CAs.
//!
//! herd-pki generates and checks the CA; this module only decides where it lives and refuses
//! to start, with a message naming the files, when they do not belong together.

use std::path::{Path, PathBuf};

use anyhow::Context;
use herd_pki::{CaConfig, CertificateAuthority, PkiError};

use super::store;
use crate::config::Settings;
use crate::files::write_atomically;
use crate::store::Db;

/// The CA certificate's lifetime when herd generates it.
pub const CA_VALIDITY_DAYS: u32 = 3650;
/// The CA's subject common name.
pub const CA_COMMON_NAME: &str = "herd Device CA";

/// `ca-key.pem` and `ca-cert.pem` of a data directory.
pub fn paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("certificates");
    (dir.join("ca-key.pem"), dir.join("ca-cert.pem"))
}

/// Loads the CA, or generates it when neither file exists. Answers whether it was created.
pub fn load_or_generate(settings: &Settings, now: i64) -> anyhow::Result<(CertificateAuthority, bool)> {
    let (key_path, cert_path) = paths(&settings.data_dir);
    match (key_path.exists(), cert_path.exists()) {
        (true, true) => load(&key_path, &cert_path).map(|ca| (ca, false)),
        (false, false) => {
            let config = CaConfig {
                common_name: CA_COMMON_NAME.to_string(),
                organization: settings.cert_organization.clone(),
                country: settings.cert_country.clone(),
                validity_days: CA_VALIDITY_DAYS,
                key_algorithm: settings.ca_key_algorithm,
            };
            let ca = CertificateAuthority::generate(&config, now.div_euclid(1000)).context("cannot generate the CA")?;
            // The key first: a certificate without its key would be a CA that cannot sign.
            write_atomically(&key_path, ca.private_key_pem().as_bytes(), 0o600)?;
            write_atomically(&cert_path, ca.certificate_pem().as_bytes(), 0o644)?;
            tracing::info!(
                certificate = %cert_path.display(), key = %key_path.display(), subject = %ca.info().subject,
                "generated the CA ({}); its key file has mode 0600", ca.key_description()
            );
            Ok((ca, true))
        }
        (true, false) => anyhow::bail!(
            "found the CA key {} but not its certificate {}; restore the certificate (a new CA would invalidate every device certificate)",
            key_path.display(),
            cert_path.display()
        ),
        (false, true) => anyhow::bail!(
            "found the CA certificate {} but not its key {}; restore the key (a new CA would invalidate every device certificate)",
            cert_path.display(),
            key_path.display()
        ),
    }
}

/// Loads an existing CA; a key that does not belong to the certificate is refused by name.
pub fn load(key_path: &Path, cert_path: &Path) -> anyhow::Result<CertificateAuthority> {
    let key = std::fs::read_to_string(key_path).with_context(|| format!("cannot read {}", key_path.display()))?;
    let cert = std::fs::read_to_string(cert_path).with_context(|| format!("cannot read {}", cert_path.display()))?;
    CertificateAuthority::from_pem(&cert, &key).map_err(|error| match error {
        PkiError::KeyMismatch => anyhow::anyhow!(
            "the CA key {} does not match the CA certificate {}: restore the key that belongs to this certificate",
            key_path.display(),
            cert_path.display()
        ),
        other => anyhow::Error::new(other).context(format!("cannot load the CA from {}", cert_path.display())),
    })
}

/// Loads or generates the CA and checks it against the database's pin: a database whose
/// certificates were issued by another CA refuses this one, and a data directory without a CA
/// does not silently generate a second CA for a database that already has one.
pub async fn open(db: &Db, settings: &Settings, now: i64) -> anyhow::Result<CertificateAuthority> {
    let (key_path, cert_path) = paths(&settings.data_dir);
    let pinned = store::pinned_ca(db).await.context("cannot read the CA pin")?;
    if let (Some(pinned), false, false) = (&pinned, key_path.exists(), cert_path.exists()) {
        anyhow::bail!(
            "this database's certificates were issued by the CA with SHA-256 fingerprint {pinned}, but {} has no CA; \
             copy ca-cert.pem and ca-key.pem of that CA there (every instance sharing a database needs the same CA)",
            key_path.parent().map(Path::display).map(|d| d.to_string()).unwrap_or_default()
        );
    }
    let settings = settings.clone();
    let (ca, _created) = tokio::task::spawn_blocking(move || load_or_generate(&settings, now))
        .await
        .context("the CA loader stopped")??;
    let info = ca.info();
    match pinned {
        Some(pinned) if pinned != info.fingerprint_sha256 => anyhow::bail!(
            "the CA in {} (SHA-256 fingerprint {}) is not the CA this database's certificates were issued by ({pinned}); \
             every instance sharing a database needs the same ca-cert.pem and ca-key.pem",
            cert_path.display(),
            info.fingerprint_sha256
        ),
        Some(_) => {}
        None => store::pin_ca(db, &info.fingerprint_sha256, ca.certificate_pem(), now).await?,
    }
    Ok(ca)
}

/// What `herd ca show` prints.
pub fn describe(ca: &CertificateAuthority) -> String {
    let info = ca.info();
    let when = |seconds: i64| crate::clock::from_millis(seconds * 1000).to_rfc3339();
    format!(
        "subject:     {}\nissuer:      {}\nserial:      {}\nfingerprint: SHA-256 {}\nnot before:  {}\nnot after:   {}\nkey:         {}\n",
        info.subject,
        info.issuer,
        info.serial_hex,
        info.fingerprint_sha256,
        when(info.not_before),
        when(info.not_after),
        ca.key_description()
    )
}
