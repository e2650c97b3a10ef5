//! Certificate signing requests: the only door through which a foreign public key reaches
//! [`crate::CertificateAuthority::issue`].
//!
//! A [`VerifiedCsr`] exists only after the request parsed, its key passed the key policy and its
//! self-signature verified. Nothing from the CSR except the public key is ever copied into a
//! certificate: the subject, extensions and attributes a device asks for are ignored, because
//! the server decides the subject (`CN=Device-{id}`) and the CA decides the extensions.

use std::fmt;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::info::format_name;
use crate::public_key::{self, KeyKind, KeyRejection, SignatureFailure};

/// Why a CSR was refused. The `Display` text is meant for the person who sent the CSR (it goes
/// into a 422 response body) and never echoes the CSR back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// Not a PKCS#10 request, truncated, or not PEM.
    #[error("the certificate signing request could not be parsed: {0}")]
    Malformed(String),
    /// The signature does not verify with the request's own public key.
    #[error(
        "the certificate signing request's signature does not match its public key \
         (it was altered after signing, or signed with a different key)"
    )]
    BadSignature,
    /// A supported key type that is too weak (RSA below 2048 bits).
    #[error("the certificate signing request's key is too weak: {0}")]
    WeakKey(String),
    /// A key type herd does not issue for (Ed25519, DSA, P-521, ...).
    #[error("the certificate signing request's key type is not supported: {0}")]
    UnsupportedKey(String),
    /// The request was signed with an algorithm herd does not verify (SHA-1, RSASSA-PSS, ...).
    #[error("the certificate signing request's signature algorithm is not supported: {0}")]
    UnsupportedSignatureAlgorithm(String),
}

/// A CSR whose self-signature and key policy were verified; the only foreign public key
/// [`crate::CertificateAuthority::issue`] accepts.
#[derive(Clone)]
pub struct VerifiedCsr {
    /// The public key, in the form rcgen's certificate encoder consumes.
    pub(crate) public_key: rcgen::SubjectPublicKeyInfo,
    /// What the key is, for keyUsage and descriptions.
    pub(crate) kind: KeyKind,
    /// The subject the device asked for, RFC 4514 style; informative only.
    requested_subject: String,
}

impl VerifiedCsr {
    /// Parses a PEM CSR ("CERTIFICATE REQUEST" or "NEW CERTIFICATE REQUEST") and verifies it.
    pub fn from_pem(pem: &str) -> Result<Self, CsrError> {
        let blocks = pem::parse_many(pem).map_err(|error| CsrError::Malformed(error.to_string()))?;
        let block = blocks
            .iter()
            .find(|block| matches!(block.tag(), "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"))
            .ok_or_else(|| {
                CsrError::Malformed("expected a PEM block \"-----BEGIN CERTIFICATE REQUEST-----\"".to_string())
            })?;
        Self::from_der(block.contents())
    }

    /// Parses a DER PKCS#10 request and verifies it.
    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|error| CsrError::Malformed(format!("not a PKCS#10 request ({error})")))?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed("unexpected data after the request".to_string()));
        }
        let info = &csr.certification_request_info;
        let kind = public_key::classify(&info.subject_pki).map_err(|rejection| match rejection {
            KeyRejection::Weak(message) => CsrError::WeakKey(message),
            KeyRejection::Unsupported(message) => CsrError::UnsupportedKey(message),
            KeyRejection::Malformed(message) => CsrError::Malformed(message),
        })?;
        public_key::verify(
            kind,
            &info.subject_pki,
            &csr.signature_algorithm.algorithm,
            info.raw,
            &csr.signature_value.data,
        )
        .map_err(|failure| match failure {
            SignatureFailure::Invalid => CsrError::BadSignature,
            SignatureFailure::UnsupportedAlgorithm(message) => CsrError::UnsupportedSignatureAlgorithm(message),
        })?;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
            .map_err(|error| CsrError::UnsupportedKey(format!("unusual public key encoding ({error})")))?;
        Ok(VerifiedCsr { public_key, kind, requested_subject: format_name(&info.subject) })
    }

    /// A short description of the key, such as "RSA 2048-bit" or "ECDSA P-384".
    pub fn key_description(&self) -> String {
        self.kind.describe()
    }

    /// The subject the device asked for (RFC 4514 style). It is never copied into the issued
    /// certificate; it is here for logs and audit records.
    pub fn requested_subject(&self) -> &str {
        &self.requested_subject
    }
}

impl fmt::Debug for VerifiedCsr {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("VerifiedCsr")
            .field("kind", &self.kind)
            .field("requested_subject", &self.requested_subject)
            .finish_non_exhaustive()
    }
}
