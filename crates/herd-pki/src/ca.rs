//! The certificate authority: generating or loading the CA, issuing leaves, signing CRLs and
//! checking that a certificate was signed by this CA.
//!
//! Owns the CA certificate profile (self-signed; basicConstraints cA=TRUE, pathLenConstraint 0,
//! critical; keyUsage keyCertSign + cRLSign + digitalSignature, critical; subject and authority
//! key identifiers; random positive serial) and the pairing of the CA key with its certificate.
//! It never writes files: the server persists [`CertificateAuthority::certificate_pem`] and
//! [`CertificateAuthority::private_key_pem`] where it likes.

use std::fmt;
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, PublicKeyData, RsaKeySize, SerialNumber, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
};
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::ParsedExtension;

use crate::crl::revoked_params;
use crate::info::{der_from_pem_or_der, describe, parse_der, pem_encode};
use crate::keys::{key_kind, key_pair_from_pem};
use crate::leaf::{key_identifier, leaf_params, random_serial, subject_name};
use crate::public_key::{self, KeyKind};
use crate::time_conv::{add_days, from_unix};
use crate::{CertificateInfo, Crl, IssuedCertificate, LeafKey, LeafRequest, PkiError, RevokedEntry};

/// The key algorithm of a newly generated CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CaKeyAlgorithm {
    /// ECDSA on P-256, signing with ECDSA-SHA256. Fast and small; the default.
    #[default]
    EcdsaP256,
    /// RSA 2048, signing with RSA-PKCS#1-SHA256.
    Rsa2048,
    /// RSA 3072, signing with RSA-PKCS#1-SHA256.
    Rsa3072,
    /// RSA 4096, signing with RSA-PKCS#1-SHA256.
    Rsa4096,
}

impl CaKeyAlgorithm {
    /// The configuration spelling: "ecdsa-p256", "rsa-2048", "rsa-3072" or "rsa-4096".
    pub fn as_str(self) -> &'static str {
        match self {
            CaKeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            CaKeyAlgorithm::Rsa2048 => "rsa-2048",
            CaKeyAlgorithm::Rsa3072 => "rsa-3072",
            CaKeyAlgorithm::Rsa4096 => "rsa-4096",
        }
    }

    fn generate_key(self) -> Result<KeyPair, PkiError> {
        let rsa = |size| KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, size);
        match self {
            CaKeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
            CaKeyAlgorithm::Rsa2048 => rsa(RsaKeySize::_2048),
            CaKeyAlgorithm::Rsa3072 => rsa(RsaKeySize::_3072),
            CaKeyAlgorithm::Rsa4096 => rsa(RsaKeySize::_4096),
        }
        .map_err(|error| PkiError::Crypto(format!("CA key generation failed: {error}")))
    }
}

impl fmt::Display for CaKeyAlgorithm {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for CaKeyAlgorithm {
    type Err = PkiError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [CaKeyAlgorithm::EcdsaP256, CaKeyAlgorithm::Rsa2048, CaKeyAlgorithm::Rsa3072, CaKeyAlgorithm::Rsa4096]
            .into_iter()
            .find(|algorithm| algorithm.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| {
                PkiError::Unsupported(format!(
                    "CA key algorithm {text:?}; expected ecdsa-p256, rsa-2048, rsa-3072 or rsa-4096"
                ))
            })
    }
}

/// How to create a new CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaConfig {
    /// Subject commonName of the CA, e.g. "herd Device CA".
    pub common_name: String,
    /// Subject organizationName (omitted when empty).
    pub organization: String,
    /// Subject countryName, two letters (omitted when empty).
    pub country: String,
    /// Validity from `now`, in days (the server uses 3650).
    pub validity_days: u32,
    /// The CA key's algorithm.
    pub key_algorithm: CaKeyAlgorithm,
}

/// A CA certificate together with its private key. Immutable, `Send + Sync`: share it behind an
/// `Arc` and call [`CertificateAuthority::issue`] from any thread.
pub struct CertificateAuthority {
    /// What rcgen signs with: the CA subject name, key identifier, key usages and private key.
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, DER.
    certificate_der: Vec<u8>,
    /// The CA certificate, PEM.
    certificate_pem: String,
    /// Facts about the CA certificate, computed once.
    info: CertificateInfo,
    /// The CA's subjectKeyIdentifier: the authorityKeyIdentifier of every leaf and CRL.
    key_identifier: Vec<u8>,
    /// The CA public key's kind, to pick the verification algorithm in `verify_issued`.
    key_kind: KeyKind,
}

impl CertificateAuthority {
    /// Creates a new self-signed CA valid from `now` for `config.validity_days` days.
    pub fn generate(config: &CaConfig, now: i64) -> Result<Self, PkiError> {
        let not_after = add_days(now, config.validity_days, "CA validity_days")?;
        let key = config.key_algorithm.generate_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject_name(&config.common_name, &config.organization, &config.country)?;
        params.not_before = from_unix(now, "now")?;
        params.not_after = from_unix(not_after, "now + CA validity_days")?;
        params.serial_number = Some(random_serial()?);
        // pathLenConstraint 0: herd's CA signs device certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        // RFC 5280 lets a self-signed CA omit authorityKeyIdentifier; including it (equal to
        // the subjectKeyIdentifier) costs 30 bytes and helps path builders that look for it.
        params.use_authority_key_identifier_extension = true;
        let key_identifier = key_identifier(&key);
        params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier.clone());
        let certificate = params.self_signed(&key)?;
        let certificate_der = certificate.der().to_vec();
        let certificate_pem = certificate.pem();
        let info = describe(&parse_der(&certificate_der)?, &certificate_der);
        let key_kind = key_kind(&key)?;
        Ok(CertificateAuthority {
            issuer: Issuer::new(params, key),
            certificate_der,
            certificate_pem,
            info,
            key_identifier,
            key_kind,
        })
    }

    /// Loads a CA from its certificate (PEM) and private key (PEM: PKCS#8, PKCS#1 or SEC1).
    ///
    /// Fails with [`PkiError::KeyMismatch`] if the key does not belong to the certificate, with
    /// [`PkiError::NotCa`] if the certificate lacks basicConstraints cA=TRUE or (when keyUsage is
    /// present) keyCertSign, and with `Pem`/`Certificate`/`PrivateKey` errors for bad input.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let certificate_der = der_from_pem_or_der(cert_pem.as_bytes())?;
        let certificate = parse_der(&certificate_der)?;
        let is_ca = certificate
            .basic_constraints()
            .map_err(|error| PkiError::Certificate(format!("basicConstraints: {error}")))?
            .is_some_and(|constraints| constraints.value.ca);
        if !is_ca {
            return Err(PkiError::NotCa("basicConstraints is missing or does not say cA=TRUE".to_string()));
        }
        let key_usage = certificate.key_usage().map_err(|error| PkiError::Certificate(format!("keyUsage: {error}")))?;
        if key_usage.is_some_and(|usage| !usage.value.key_cert_sign()) {
            return Err(PkiError::NotCa("keyUsage does not allow keyCertSign".to_string()));
        }

        let key = key_pair_from_pem(key_pem)?;
        if key.der_bytes() != certificate.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::KeyMismatch);
        }
        let key_kind = key_kind(&key)?;
        let key_identifier = certificate
            .iter_extensions()
            .find_map(|extension| match extension.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(identifier) => Some(identifier.0.to_vec()),
                _ => None,
            })
            // A CA without subjectKeyIdentifier: derive one (RFC 7093 method 1), so leaves and
            // CRLs still carry a consistent authorityKeyIdentifier.
            .unwrap_or_else(|| key_identifier(&key));
        let info = describe(&certificate, &certificate_der);
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(certificate_der.as_slice()), key)?;
        let certificate_pem = pem_encode("CERTIFICATE", &certificate_der);
        Ok(CertificateAuthority { issuer, certificate_der, certificate_pem, info, key_identifier, key_kind })
    }

    /// The CA certificate, PEM (what `GET /ca/certificate` serves and `ca-cert.pem` holds).
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The CA certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    /// The CA private key as PKCS#8 PEM, for `ca-key.pem` (write it with mode 0600).
    pub fn private_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Serial, fingerprint, names and validity of the CA certificate itself.
    pub fn info(&self) -> CertificateInfo {
        self.info.clone()
    }

    /// A description of the CA key, such as "ECDSA P-256" or "RSA 2048-bit".
    pub fn key_description(&self) -> String {
        self.key_kind.describe()
    }

    /// Issues a client-authentication leaf for `key` with the subject and validity of `request`.
    ///
    /// The leaf's validity is taken as given, even if it outlasts the CA certificate; the server
    /// chooses `not_before` and `validity_days`.
    pub fn issue(&self, request: &LeafRequest, key: LeafKey<'_>) -> Result<IssuedCertificate, PkiError> {
        let certificate = match key {
            LeafKey::Generated(pair) => {
                leaf_params(request, pair.kind, &pair.key)?.signed_by(&pair.key, &self.issuer)?
            }
            LeafKey::Csr(csr) => {
                leaf_params(request, csr.kind, &csr.public_key)?.signed_by(&csr.public_key, &self.issuer)?
            }
        };
        let der = certificate.der().to_vec();
        let info = describe(&parse_der(&der)?, &der);
        Ok(IssuedCertificate { pem: certificate.pem(), der, info })
    }

    /// Signs a CRL listing `revoked`, numbered `crl_number` (which the server must increase with
    /// every CRL it publishes), valid from `this_update` until `next_update` (unix seconds).
    pub fn crl(
        &self,
        revoked: &[RevokedEntry],
        crl_number: u64,
        this_update: i64,
        next_update: i64,
    ) -> Result<Crl, PkiError> {
        if next_update <= this_update {
            return Err(PkiError::InvalidRequest("a CRL's next_update must be later than its this_update".to_string()));
        }
        let params = CertificateRevocationListParams {
            this_update: from_unix(this_update, "this_update")?,
            next_update: from_unix(next_update, "next_update")?,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked_params(revoked)?,
            key_identifier_method: KeyIdMethod::PreSpecified(self.key_identifier.clone()),
        };
        let crl = params.signed_by(&self.issuer).map_err(|error| match error {
            rcgen::Error::IssuerNotCrlSigner => {
                PkiError::NotCa("the CA certificate's keyUsage does not include cRLSign".to_string())
            }
            other => PkiError::from(other),
        })?;
        let der = crl.der().to_vec();
        let pem = pem_encode("X509 CRL", &der);
        Ok(Crl { der, pem })
    }

    /// True iff `cert_der` is a well-formed certificate whose signature verifies with this CA's
    /// public key. Checks nothing else: not dates, names, extensions or revocation.
    pub fn verify_issued(&self, cert_der: &[u8]) -> bool {
        let Ok(ca) = parse_der(&self.certificate_der) else {
            return false;
        };
        let Ok(certificate) = parse_der(cert_der) else {
            return false;
        };
        public_key::verify(
            self.key_kind,
            ca.public_key(),
            &certificate.signature_algorithm.algorithm,
            certificate.tbs_certificate.as_ref(),
            &certificate.signature_value.data,
        )
        .is_ok()
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("CertificateAuthority")
            .field("subject", &self.info.subject)
            .field("serial_hex", &self.info.serial_hex)
            .field("key", &self.key_kind.describe())
            .finish_non_exhaustive()
    }
}

/// The server shares one CA across request handlers; keep that possible.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CertificateAuthority>();
};
