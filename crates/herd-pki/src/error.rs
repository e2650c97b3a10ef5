//! The crate's error type for everything except CSR verification (which has [`crate::CsrError`],
//! because its messages go verbatim into a 422 response).
//!
//! Messages are full sentences a human operator understands; none of them carries key material.

use crate::csr::CsrError;

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The input was not valid PEM, or held no block of the expected kind.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// The bytes are not a well-formed X.509 certificate.
    #[error("malformed certificate: {0}")]
    Certificate(String),
    /// The private key could not be parsed or is of an unsupported kind.
    #[error("unusable private key: {0}")]
    PrivateKey(String),
    /// The certificate given as a CA certificate cannot act as one.
    #[error("not a CA certificate: {0}")]
    NotCa(String),
    /// The private key does not belong to the certificate it was loaded with.
    #[error("the private key does not match the CA certificate's public key")]
    KeyMismatch,
    /// A key algorithm, key size or parameter that this crate does not support was requested.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A leaf request, CA configuration or CRL request has an invalid field.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The public key of a CSR failed verification (only produced when a CSR is re-checked).
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// Building or signing a certificate or CRL failed inside the encoder.
    #[error("signing failed: {0}")]
    Signing(String),
    /// The system random generator or a key generation primitive failed.
    #[error("cryptographic primitive failed: {0}")]
    Crypto(String),
    /// Sealed data did not authenticate: wrong key, wrong associated data, truncated or tampered.
    #[error("sealed data could not be opened: wrong key or context, truncated, or tampered with")]
    Unseal,
}

impl From<rcgen::Error> for PkiError {
    fn from(error: rcgen::Error) -> Self {
        PkiError::Signing(error.to_string())
    }
}
