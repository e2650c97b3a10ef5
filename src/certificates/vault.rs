//! Where private keys live: the seed's two certificate services as two backends behind one
//! interface (`HERD_CERT_STORE`).
//!
//! - `file` (DeviceCertificatesService): `<data-dir>/certificates/devices/private/{deviceId}-key.pem`
//!   (0600) and `devices/public/{deviceId}-cert.pem`, written atomically (temp file + rename) by
//!   one thread a group at a time ([`super::file_writer`]).
//!   The record keeps the SHA-256 of the key file, so a file later overwritten by the device's
//!   next certificate is recognised instead of being handed out as the wrong key.
//! - `database` (CertificateManagementService): the key sealed with AES-256-GCM under the
//!   key-encryption key (`HERD_KEY_ENCRYPTION_KEY`, or `<data-dir>/kek`, 0600), bound to the
//!   record id as associated data so sealed keys cannot be swapped between rows.
//!
//! Certificates themselves are public and always kept in the record too. Each record says
//! where its key is (`key_storage`), and reads follow the record, not the setting: a key
//! written by one backend stays readable after the operator switches. This module must not
//! decide who may read a key; callers prove the tenant first.

use std::path::PathBuf;

use anyhow::Context;
use base64::Engine as _;

use super::file_writer::FileWriter;
use super::sha256_hex;
use super::store::{self, CertificateMaterial, KeyColumns};
use crate::config::{CertStoreKind, Settings};
use crate::ids::{CertificateId, DeviceId};
use crate::store::Db;

const FILE: &str = "file";
const DATABASE: &str = "database";

/// The key store of this process.
pub(crate) struct Vault {
    /// Where new keys go.
    kind: CertStoreKind,
    /// `<data-dir>/certificates`.
    root: PathBuf,
    /// The key-encryption key, when configured or present (always in `database` mode).
    kek: Option<[u8; 32]>,
    /// Writes the seed's files in `file` mode.
    files: Option<FileWriter>,
}

/// What `herd certificates migrate-store` did.
#[derive(Debug, Default)]
pub struct MigrateOutcome {
    pub moved: usize,
    /// Keys left where they were: not current (database → file keeps one file per device), or
    /// a key file that no longer matches its record.
    pub skipped: usize,
}

impl Vault {
    /// Opens the key store. In `database` mode a missing `<data-dir>/kek` is created; in `file`
    /// mode an existing one is loaded so that keys stored before a switch stay readable.
    pub(crate) fn open(settings: &Settings) -> anyhow::Result<Vault> {
        let root = settings.data_dir.join("certificates");
        let kek_path = settings.data_dir.join("kek");
        let kek = match &settings.key_encryption_key {
            Some(text) => {
                Some(parse_kek(text.expose()).context("HERD_KEY_ENCRYPTION_KEY must be 64 hex characters (32 bytes)")?)
            }
            None if kek_path.exists() => {
                let text = std::fs::read_to_string(&kek_path)
                    .with_context(|| format!("cannot read {}", kek_path.display()))?;
                Some(parse_kek(&text).with_context(|| format!("{} must hold 64 hex characters", kek_path.display()))?)
            }
            None if settings.cert_store == CertStoreKind::Database => {
                let mut kek = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut kek);
                crate::tenants::write_secret_file(&kek_path, &hex::encode(kek))?;
                tracing::info!(path = %kek_path.display(), "created the key-encryption key for private keys in the database (mode 0600); instances sharing the database need the same key (HERD_KEY_ENCRYPTION_KEY)");
                Some(kek)
            }
            None => None,
        };
        let files = match settings.cert_store {
            CertStoreKind::File => Some(FileWriter::start()?),
            CertStoreKind::Database => None,
        };
        Ok(Vault { kind: settings.cert_store, root, kek, files })
    }

    /// The key-encryption key, when one is configured or present in the data directory.
    pub(crate) fn kek(&self) -> Option<&[u8; 32]> {
        self.kek.as_ref()
    }

    /// The columns that record where a new certificate's private key is. In `database` mode
    /// this seals the key; in `file` mode it records the digest of the file
    /// [`Vault::write_files`] will write.
    pub(crate) fn columns_for(&self, id: CertificateId, private_key_pem: Option<&str>) -> anyhow::Result<KeyColumns> {
        let Some(key) = private_key_pem else {
            return Ok(KeyColumns::default());
        };
        match self.kind {
            CertStoreKind::File => Ok(KeyColumns {
                key_storage: Some(FILE),
                private_key_sealed: None,
                private_key_digest: Some(sha256_hex(key.as_bytes())),
            }),
            CertStoreKind::Database => {
                let kek = self.kek.as_ref().context("no key-encryption key is configured")?;
                let sealed = herd_pki::sealing::seal(kek, key.as_bytes(), id.to_string().as_bytes())?;
                Ok(KeyColumns {
                    key_storage: Some(DATABASE),
                    private_key_sealed: Some(base64::engine::general_purpose::STANDARD.encode(sealed)),
                    private_key_digest: None,
                })
            }
        }
    }

    /// In `file` mode, writes the seed's files for a device's newest certificate: the key for
    /// server-generated keys, and for a CSR certificate removes the key file a previous server
    /// key left (security finding 13). Nothing in `database` mode.
    pub(crate) async fn write_files(
        &self,
        device_id: DeviceId,
        certificate_pem: &str,
        private_key_pem: Option<&str>,
    ) -> anyhow::Result<()> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        // A certificate for the device's own key (CSR) removes the key file a previous server
        // key left: the files are a matching pair or there is no key file, at every moment.
        files
            .write(
                self.cert_path(device_id),
                self.key_path(device_id),
                certificate_pem.to_string(),
                private_key_pem.map(str::to_string),
            )
            .await
    }

    /// The private key of a record, from wherever the record says it is. `None` for a CSR
    /// certificate (herd never had its key).
    pub(crate) async fn read_key(
        &self,
        id: CertificateId,
        device_id: DeviceId,
        material: &CertificateMaterial,
    ) -> anyhow::Result<Option<String>> {
        match material.key_storage.as_deref() {
            None => Ok(None),
            Some(DATABASE) => {
                let sealed = material.private_key_sealed.as_deref().context("the sealed key is missing")?;
                let kek = self.kek.as_ref().context(
                    "this private key is stored encrypted in the database but no key-encryption key is configured \
                     (HERD_KEY_ENCRYPTION_KEY or <data-dir>/kek)",
                )?;
                let sealed = base64::engine::general_purpose::STANDARD.decode(sealed)?;
                let plain = herd_pki::sealing::open(kek, &sealed, id.to_string().as_bytes())?;
                Ok(Some(String::from_utf8(plain).context("the unsealed key is not text")?))
            }
            Some(FILE) => {
                let path = self.key_path(device_id);
                let text = tokio::fs::read_to_string(&path)
                    .await
                    .with_context(|| format!("cannot read {}", path.display()))?;
                if material.private_key_digest.as_deref() != Some(sha256_hex(text.as_bytes()).as_str()) {
                    anyhow::bail!(
                        "{} now holds another certificate's key; this certificate's key is no longer available",
                        path.display()
                    );
                }
                Ok(Some(text))
            }
            Some(other) => anyhow::bail!("unknown key storage {other:?}"),
        }
    }

    fn key_path(&self, device_id: DeviceId) -> PathBuf {
        self.root.join("devices").join("private").join(format!("{device_id}-key.pem"))
    }

    fn cert_path(&self, device_id: DeviceId) -> PathBuf {
        self.root.join("devices").join("public").join(format!("{device_id}-cert.pem"))
    }
}

/// Moves private keys into the configured store. File → database moves every key whose file
/// still matches its record; database → file moves each device's current key (the seed keeps
/// one key file per device), oldest first so the newest wins. Other keys stay where they are
/// and remain readable there.
pub(crate) async fn migrate(db: &Db, vault: &Vault) -> anyhow::Result<MigrateOutcome> {
    let from = match vault.kind {
        CertStoreKind::File => DATABASE,
        CertStoreKind::Database => FILE,
    };
    let mut outcome = MigrateOutcome::default();
    for (id_text, device_text, _status, current) in store::keys_stored_in(db, from).await? {
        let (id, device_id): (CertificateId, DeviceId) = (id_text.parse()?, device_text.parse()?);
        if vault.kind == CertStoreKind::File && !current {
            outcome.skipped += 1;
            continue;
        }
        let Some(material) = store::material_of(db, &id_text).await? else { continue };
        let key = match vault.read_key(id, device_id, &material).await {
            Ok(Some(key)) => key,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(certificate = %id, error = format!("{error:#}"), "key left where it is");
                outcome.skipped += 1;
                continue;
            }
        };
        let columns = vault.columns_for(id, Some(&key))?;
        vault.write_files(device_id, &material.certificate_pem, Some(&key)).await?;
        store::set_key_columns(db, &id_text, &columns).await?;
        outcome.moved += 1;
    }
    Ok(outcome)
}

pub(crate) fn parse_kek(text: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(text.trim())?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("expected 32 bytes"))
}
