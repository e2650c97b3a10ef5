//! Certificates: herd's CA, device certificate issuance (server-generated key or the device's
//! CSR), the lifecycle `pending → active → expired` with warnings and auto-renewal, revocation,
//! the CRL and validation (the seed's "Certificate Management" and "CA Infrastructure").
//!
//! [`CertificateService`] is the one entry point; handlers and the monitor call it. It owns the
//! order of every operation (prove the device, make the key, sign, store, emit) and never does
//! cryptography itself: herd-pki does, and a CSR reaches signing only as a `VerifiedCsr`.
//!
//! Tenancy: certificate records are global in the seed, so every operation that touches a
//! device first proves, through [`DeviceStore`], that the device is in the caller's tenant; the
//! records also carry the tenant id and [`store::CertificateStore`] binds it into every query,
//! so another tenant's certificate answers exactly like a missing one. Key storage is behind
//! [`vault::Vault`]: this module does not know whether keys live in files or in the database.

pub mod authority;
mod file_writer;
pub mod keypool;
pub mod monitor;
pub(crate) mod routes;
pub use herd_store::certificates as store;
pub(crate) mod vault;

use std::sync::Arc;

use anyhow::Context;
use base64::Engine as _;
use herd_pki::{CertificateAuthority, CsrError, LeafKey, LeafRequest, RevocationReason, RevokedEntry, VerifiedCsr};

use crate::auth::TenantScope;
use crate::config::Settings;
use crate::devices::store::DeviceStore;
use crate::events::Event;
use crate::http::error::ApiError;
use crate::ids::{CertificateId, DeviceId};
use crate::store::{Db, StoreError};
use keypool::KeyPool;
use store::{CertificateRow, CertificateStore, Recorded};
use vault::Vault;

pub use herd_domain::status::{CertificateStatus, KeySource};

/// How long a published CRL is valid (`nextUpdate - thisUpdate`).
pub const CRL_LIFETIME_SECONDS: i64 = 7 * 86_400;
/// A CRL with less than this left before its `nextUpdate` is re-signed before it is served.
pub const CRL_REFRESH_MARGIN_SECONDS: i64 = CRL_LIFETIME_SECONDS / 2;

/// The key a new certificate certifies.
pub enum NewKey {
    /// Take a fresh RSA key from the key pool.
    Generated,
    /// The device's own key, proven by its verified CSR.
    Csr(VerifiedCsr),
}

/// A freshly issued certificate with everything the caller hands to the device.
#[derive(Debug)]
pub struct Issued {
    pub record: CertificateRow,
    pub certificate_pem: String,
    /// Only for server-generated keys.
    pub private_key_pem: Option<String>,
}

/// What a certificate operation can fail with; converted to HTTP problems at the edge.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The certificate or device does not exist in the caller's tenant (indistinguishable).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The CSR was malformed, badly signed, or its key too weak; the text says why.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The operation contradicts the record's state (revoked, already renewed, …).
    #[error("{0}")]
    Conflict(String),
    /// A request field is invalid.
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

impl From<herd_pki::PkiError> for CertificateError {
    fn from(error: herd_pki::PkiError) -> Self {
        CertificateError::Internal(anyhow::Error::new(error).context("the CA could not sign"))
    }
}

impl From<CertificateError> for ApiError {
    fn from(error: CertificateError) -> Self {
        match error {
            CertificateError::NotFound(what) => ApiError::not_found(what),
            CertificateError::Csr(error) => ApiError::invalid("csr", error.to_string()),
            CertificateError::Conflict(message) => ApiError::Conflict(message),
            CertificateError::Invalid { field, message } => ApiError::invalid(field, message),
            CertificateError::Store(error) => error.into(),
            CertificateError::Internal(error) => ApiError::internal(error),
        }
    }
}

/// The outcome of `POST /certificates/validate`: every failed check, not only the first.
#[derive(Debug, Clone)]
pub struct Validation {
    pub reasons: Vec<&'static str>,
    /// The caller's tenant's record with this fingerprint, if any.
    pub record: Option<CertificateRow>,
    /// `notAfter` of the certificate (from the certificate itself, or the record).
    pub not_after: Option<i64>,
}

/// The reasons [`CertificateService::validate`] can give.
pub mod reasons {
    /// The text is not a certificate.
    pub const MALFORMED: &str = "malformed";
    /// The signature does not verify with herd's CA key.
    pub const NOT_SIGNED_BY_CA: &str = "notSignedByCa";
    /// Before `notBefore`.
    pub const NOT_YET_VALID: &str = "notYetValid";
    /// After `notAfter`.
    pub const EXPIRED: &str = "expired";
    /// The record is revoked.
    pub const REVOKED: &str = "revoked";
    /// No record of the caller's tenant has this fingerprint.
    pub const UNKNOWN_CERTIFICATE: &str = "unknownCertificate";
}

/// The CA, the key pool, the key store and the issuance profile: everything certificate
/// operations need. One per process, shared by handlers and the monitor.
pub struct CertificateService {
    /// Immutable after startup; herd-pki's CA is `Send + Sync` and signs from any thread.
    ca: Arc<CertificateAuthority>,
    /// Used directly only for global work: the CRL, the monitor's sweeps, startup. Tenant data
    /// is reached through the `TenantScope` a caller passes in.
    db: Db,
    /// Where private keys (and, in `file` mode, the seed's certificate files) live.
    vault: Vault,
    /// Pre-generated RSA device keys, so that a request does not wait ~45 ms for one.
    keys: KeyPool,
    /// One CRL signer at a time per instance: a burst of `GET /ca/crl` on a stale CRL signs
    /// it once, the others read the fresh one (security finding 3).
    crl_signer: tokio::sync::Mutex<()>,
    organization: String,
    country: String,
    validity_days: u32,
    renewal_warning_days: u32,
    auto_renewal_days: u32,
    crl_distribution_url: Option<String>,
}

impl CertificateService {
    /// Loads (or on first start generates) the CA, checks it against the one this database
    /// belongs to, and opens the key store. Refuses to start on a mismatched key and
    /// certificate, with a message that says which files.
    pub async fn start(db: &Db, settings: &Settings, now: i64) -> anyhow::Result<CertificateService> {
        let ca = authority::open(db, settings, now).await?;
        let vault = Vault::open(settings).context("cannot open the certificate key store")?;
        Ok(CertificateService {
            ca: Arc::new(ca),
            db: db.clone(),
            vault,
            keys: KeyPool::new(settings.cert_key_size, settings.cert_key_pool_size),
            crl_signer: tokio::sync::Mutex::new(()),
            organization: settings.cert_organization.clone(),
            country: settings.cert_country.clone(),
            validity_days: settings.cert_validity_days,
            renewal_warning_days: settings.cert_renewal_warning_days,
            auto_renewal_days: settings.cert_auto_renewal_days,
            crl_distribution_url: settings.public_url.as_ref().map(|base| format!("{base}/ca/crl")),
        })
    }

    /// A 32-byte key for `purpose` (a fixed label), the same on every instance that shares this
    /// database and across restarts: HMAC-SHA256 keyed with the key-encryption key
    /// (`HERD_KEY_ENCRYPTION_KEY` or `<data-dir>/kek`) when there is one, else with the CA's
    /// private key (which every instance of a database must hold: the CA pin refuses another
    /// CA). The label names the source, so switching it changes the key. Replacing the
    /// key-encryption key or the CA changes every key derived here.
    pub(crate) fn derive_key(&self, purpose: &str) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let (source, secret) = match self.vault.kek() {
            Some(kek) => ("kek", kek.to_vec()),
            None => ("ca-key", self.ca.private_key_pem().into_bytes()),
        };
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&secret).expect("HMAC takes a key of any length");
        mac.update(format!("herd key derivation v1\0{source}\0{purpose}").as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The CA certificate, PEM (`GET /ca/certificate`).
    pub fn ca_certificate_pem(&self) -> &str {
        self.ca.certificate_pem()
    }

    /// The CA certificate, DER.
    pub fn ca_certificate_der(&self) -> &[u8] {
        self.ca.certificate_der()
    }

    /// Issues a certificate for a device of the caller's tenant (`issueCertificate`). With
    /// `replaces`, the new certificate succeeds that one (renewal): the old record is marked
    /// `replacedById` in the same transaction, or nothing happens if it was already replaced
    /// or revoked meanwhile (so each certificate is renewed once, whoever races).
    pub async fn issue(
        &self,
        scope: &TenantScope,
        device_id: DeviceId,
        key: NewKey,
        replaces: Option<CertificateId>,
        now: i64,
    ) -> Result<Issued, CertificateError> {
        // The write below proves the device in its own transaction (a missing device answers
        // 404 there, and the signed certificate is dropped unseen). A server-generated key is
        // taken from the pool only for a device proven first, so that requests for missing
        // devices cannot drain it.
        if matches!(key, NewKey::Generated) {
            prove_device(scope, device_id).await?;
        }
        let (key_source, generated) = match &key {
            NewKey::Generated => (KeySource::Server, Some(self.keys.take().await.map_err(CertificateError::Internal)?)),
            NewKey::Csr(_) => (KeySource::Csr, None),
        };
        let request = LeafRequest {
            common_name: format!("Device-{device_id}"),
            organization: self.organization.clone(),
            country: self.country.clone(),
            not_before: now.div_euclid(1000),
            validity_days: self.validity_days,
            crl_distribution_url: self.crl_distribution_url.clone(),
        };
        let leaf_key = match (&key, &generated) {
            (NewKey::Csr(csr), _) => LeafKey::Csr(csr),
            (NewKey::Generated, Some(pair)) => LeafKey::Generated(pair),
            (NewKey::Generated, None) => {
                return Err(CertificateError::Internal(anyhow::anyhow!("no key was generated")))
            }
        };
        let issued = self.ca.issue(&request, leaf_key)?;
        let private_key_pem = generated.as_ref().map(|pair| pair.private_key_pem());

        let id = CertificateId::new();
        let key_columns = self.vault.columns_for(id, private_key_pem.as_deref()).map_err(CertificateError::Internal)?;
        let not_before = issued.info.not_before * 1000;
        let record = CertificateRow {
            id,
            tenant_id: scope.tenant_id(),
            device_id,
            serial_number: issued.info.serial_hex.clone(),
            fingerprint: issued.info.fingerprint_sha256.clone(),
            subject: issued.info.subject.clone(),
            issuer: issued.info.issuer.clone(),
            not_before,
            not_after: issued.info.not_after * 1000,
            status: if not_before > now { CertificateStatus::Pending } else { CertificateStatus::Active },
            revoked_at: None,
            revocation_reason: None,
            key_source,
            replaced_by_id: None,
            created_at: now,
        };
        let issued_event = Event::CertificateIssued {
            certificate_id: id,
            device_id,
            serial_number: record.serial_number.clone(),
            not_after: record.not_after,
            key_source,
        };
        // Written in one transaction that proves the device exists (a device deleted since any
        // earlier check must not be left with an active certificate); a first certificate
        // shares it with whatever other issuances are waiting.
        let mut issuance = store::Issuance {
            record: record.clone(),
            certificate_pem: issued.pem.clone(),
            key: key_columns,
            events: vec![issued_event],
        };
        let recorded = match replaces {
            None => store::record_issued(scope, issuance).await?,
            Some(old) => {
                let renewed = Event::CertificateRenewed { certificate_id: old, replaced_by_id: id, device_id };
                issuance.events.insert(0, renewed);
                store::record_renewal(scope, issuance, old).await?
            }
        };
        match recorded {
            Recorded::Done => {}
            Recorded::NoDevice => return Err(CertificateError::NotFound("device")),
            Recorded::AlreadyReplaced => {
                return Err(CertificateError::Conflict(
                    "the certificate was already renewed or revoked; renew its successor instead".into(),
                ))
            }
        }

        // Files are written once the record is committed, so a failed transaction never leaves
        // the seed's paths pointing at a certificate herd has no record of.
        if let Err(error) = self.vault.write_files(device_id, &issued.pem, private_key_pem.as_deref()).await {
            tracing::error!(error = format!("{error:#}"), certificate = %id, "cannot write the certificate files");
        }
        Ok(Issued { record, certificate_pem: issued.pem, private_key_pem })
    }

    /// Renews a certificate of the caller's tenant: a new certificate for the same device; the
    /// old record gets `replacedById`. Without a CSR this needs a server-generated key.
    pub async fn renew(
        &self,
        scope: &TenantScope,
        id: CertificateId,
        csr: Option<VerifiedCsr>,
        now: i64,
    ) -> Result<Issued, CertificateError> {
        let old = CertificateStore::new(scope).get(id).await?.ok_or(CertificateError::NotFound("certificate"))?;
        let device_id = old.device_id;
        prove_device(scope, device_id).await?;
        if old.status == CertificateStatus::Revoked {
            return Err(CertificateError::Conflict("a revoked certificate cannot be renewed".into()));
        }
        if old.replaced_by_id.is_some() {
            return Err(CertificateError::Conflict(
                "the certificate was already renewed; renew its successor instead".into(),
            ));
        }
        let key = match (csr, old.key_source.as_str()) {
            (Some(csr), _) => NewKey::Csr(csr),
            (None, "server") => NewKey::Generated,
            (None, _) => {
                return Err(CertificateError::Conflict(
                    "this certificate's key belongs to the device: renew it with a new CSR ({\"csr\": …}, or \
                     the device itself at POST /devices/self/certificates)"
                        .into(),
                ))
            }
        };
        self.issue(scope, device_id, key, Some(id), now).await
    }

    /// A device renews (or first obtains) its own certificate with a new CSR; its current
    /// certificate, if any, is marked replaced.
    pub async fn renew_by_device(
        &self,
        scope: &TenantScope,
        device_id: DeviceId,
        csr: VerifiedCsr,
        now: i64,
    ) -> Result<Issued, CertificateError> {
        let current = CertificateStore::new(scope).current_for_device(device_id).await?;
        let replaces = current.map(|row| row.id);
        self.issue(scope, device_id, NewKey::Csr(csr), replaces, now).await
    }

    /// The device's current certificate with its private key when herd holds it
    /// (`GET /devices/self/certificate`).
    pub async fn current_bundle(
        &self,
        scope: &TenantScope,
        device_id: DeviceId,
        now: i64,
    ) -> Result<Issued, CertificateError> {
        prove_device(scope, device_id).await?;
        let store = CertificateStore::new(scope);
        let record = store.current_for_device(device_id).await?.ok_or(CertificateError::NotFound("certificate"))?;
        let id = record.id;
        let material = store.material(id).await?.ok_or(CertificateError::NotFound("certificate"))?;
        // A server-generated key reaches the device once: on its first fetch, never again
        // (security finding 1). The operator's copy stays in the key store.
        let private_key_pem = if material.key_storage.is_some() && store.take_key_delivery(id, now).await? {
            self.vault.read_key(id, device_id, &material).await.map_err(CertificateError::Internal)?
        } else {
            None
        };
        Ok(Issued { record, certificate_pem: material.certificate_pem, private_key_pem })
    }

    /// Revokes a certificate of the caller's tenant with an RFC 5280 reason, then re-signs the
    /// CRL. Revocation is final: a revoked certificate is neither renewed nor un-revoked.
    pub async fn revoke(
        &self,
        scope: &TenantScope,
        id: CertificateId,
        reason: RevocationReason,
        now: i64,
    ) -> Result<CertificateRow, CertificateError> {
        if !reason.is_final() {
            return Err(CertificateError::Invalid {
                field: "reason",
                message: format!("{reason} would make the revocation reversible; herd's revocations are final"),
            });
        }
        let store = CertificateStore::new(scope);
        let row = store.get(id).await?.ok_or(CertificateError::NotFound("certificate"))?;
        let device_id = row.device_id;
        prove_device(scope, device_id).await?;
        if row.status == CertificateStatus::Revoked {
            return Err(CertificateError::Conflict("the certificate is already revoked".into()));
        }
        let mut tx = self.db.begin().await?;
        let Some(revoked) = store::revoke(&mut tx, scope, id, reason.as_str(), now).await? else {
            return Err(CertificateError::Conflict("the certificate is already revoked".into()));
        };
        let event = Event::CertificateRevoked { certificate_id: id, device_id, reason: reason.as_str() };
        tx.record(scope.tenant_id(), &event, now);
        store::mark_crl_stale(&mut tx).await?;
        tx.commit().await?;
        // The CRL is marked stale in the revocation's transaction, so if signing fails here the
        // next `GET /ca/crl` (or the monitor) publishes it.
        if let Err(error) = self.publish_crl(now).await {
            tracing::error!(error = format!("{error:#}"), "cannot re-sign the CRL after a revocation");
        }
        Ok(revoked)
    }

    /// `validateCertificate`: checks the CA signature, the validity window, revocation and that
    /// the fingerprint matches a record of the caller's tenant. With a fingerprint only, the
    /// stored certificate is checked.
    pub async fn validate(
        &self,
        scope: &TenantScope,
        certificate_pem: Option<&str>,
        fingerprint: Option<&str>,
        now: i64,
    ) -> Result<Validation, CertificateError> {
        let store = CertificateStore::new(scope);
        let (der, record) = match (certificate_pem, fingerprint) {
            (Some(pem), _) => match pem_to_der(pem) {
                Some(der) => {
                    let fingerprint = sha256_hex(&der);
                    (Some(der), store.by_fingerprint(&fingerprint).await?)
                }
                None => {
                    return Ok(Validation { reasons: vec![reasons::MALFORMED], record: None, not_after: None });
                }
            },
            (None, Some(fingerprint)) => {
                let normalized: String =
                    fingerprint.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
                let record = store.by_fingerprint(&normalized).await?;
                let der = match &record {
                    Some(row) => {
                        store.material(row.id).await?.and_then(|material| pem_to_der(&material.certificate_pem))
                    }
                    None => None,
                };
                (der, record)
            }
            (None, None) => {
                return Err(CertificateError::Invalid {
                    field: "certificatePem",
                    message: "give certificatePem or fingerprint".into(),
                })
            }
        };
        let mut found = Vec::new();
        let mut not_after = record.as_ref().map(|row| row.not_after);
        if let Some(der) = &der {
            match herd_pki::parse_certificate(der) {
                Ok(info) => {
                    if !self.ca.verify_issued(der) {
                        found.push(reasons::NOT_SIGNED_BY_CA);
                    }
                    let now_seconds = now.div_euclid(1000);
                    if now_seconds < info.not_before {
                        found.push(reasons::NOT_YET_VALID);
                    }
                    if now_seconds > info.not_after {
                        found.push(reasons::EXPIRED);
                    }
                    not_after = Some(info.not_after * 1000);
                }
                Err(_) => found.push(reasons::MALFORMED),
            }
        }
        match &record {
            Some(row) if row.status == CertificateStatus::Revoked => found.push(reasons::REVOKED),
            Some(_) => {}
            None => found.push(reasons::UNKNOWN_CERTIFICATE),
        }
        Ok(Validation { reasons: found, record, not_after })
    }

    /// The current CRL (`GET /ca/crl`), re-signed first when a revocation made it stale or its
    /// `nextUpdate` is near.
    pub async fn crl(&self, now: i64) -> Result<herd_pki::Crl, CertificateError> {
        if let Some(crl) = self.fresh_crl(now).await? {
            return Ok(crl);
        }
        let _signer = self.crl_signer.lock().await;
        // Whoever held the signer before us may have just published a fresh one.
        if let Some(crl) = self.fresh_crl(now).await? {
            return Ok(crl);
        }
        self.publish_crl(now).await
    }

    /// The stored CRL, if no revocation made it stale and its `nextUpdate` is not near.
    async fn fresh_crl(&self, now: i64) -> Result<Option<herd_pki::Crl>, CertificateError> {
        let state = store::crl_state(&self.db).await?;
        let now_seconds = now.div_euclid(1000);
        let fresh =
            !state.stale && state.next_update.is_some_and(|next| next - now_seconds > CRL_REFRESH_MARGIN_SECONDS);
        let (true, Some(der_base64)) = (fresh, &state.der_base64) else {
            return Ok(None);
        };
        let der = base64::engine::general_purpose::STANDARD
            .decode(der_base64)
            .map_err(|error| CertificateError::Internal(anyhow::anyhow!("stored CRL is not base64: {error}")))?;
        let pem = pem::encode_config(
            &pem::Pem::new("X509 CRL", der.clone()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        );
        Ok(Some(herd_pki::Crl { der, pem }))
    }

    /// Signs and stores a new CRL with every revoked, unexpired certificate; each CRL gets the
    /// next `cRLNumber` (one counter in the database, so instances sharing it never reuse one).
    pub async fn publish_crl(&self, now: i64) -> Result<herd_pki::Crl, CertificateError> {
        let this_update = now.div_euclid(1000);
        let next_update = this_update + CRL_LIFETIME_SECONDS;
        let mut tx = self.db.begin().await?;
        let number = store::next_crl_number(&mut tx).await?;
        let revoked = store::revoked_entries(&mut tx, now).await?;
        let entries: Vec<RevokedEntry> = revoked
            .into_iter()
            .map(|(serial_hex, revoked_at, reason)| RevokedEntry {
                serial_hex,
                revoked_at: revoked_at.div_euclid(1000),
                reason: reason.as_deref().and_then(|text| text.parse().ok()).unwrap_or_default(),
            })
            .collect();
        let crl = self.ca.crl(&entries, u64::try_from(number).unwrap_or(0), this_update, next_update)?;
        let der_base64 = base64::engine::general_purpose::STANDARD.encode(&crl.der);
        store::save_crl(&mut tx, this_update, next_update, &der_base64).await?;
        tx.commit().await?;
        Ok(crl)
    }

    /// Moves private keys to the configured key store (`herd certificates migrate-store`).
    pub async fn migrate_store(&self) -> anyhow::Result<vault::MigrateOutcome> {
        vault::migrate(&self.db, &self.vault).await
    }
}

/// The explicit proof the seed asks for: the device exists in the caller's tenant. A device of
/// another tenant is "not found", exactly like a missing one.
pub async fn prove_device(scope: &TenantScope, device_id: DeviceId) -> Result<(), CertificateError> {
    match DeviceStore::new(scope).get(device_id).await? {
        Some(_) => Ok(()),
        None => Err(CertificateError::NotFound("device")),
    }
}

/// The DER of the first CERTIFICATE block of a PEM text (or `None` if there is none).
fn pem_to_der(text: &str) -> Option<Vec<u8>> {
    pem::parse_many(text).ok()?.into_iter().find(|block| block.tag() == "CERTIFICATE").map(pem::Pem::into_contents)
}

/// Lowercase hex SHA-256, the form herd-pki gives fingerprints in.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
