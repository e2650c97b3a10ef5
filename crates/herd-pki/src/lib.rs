//! herd's certificate authority primitives: the CA itself, device key pairs, verified CSRs, leaf
//! issuance, CRLs, certificate inspection and the sealing of private keys at rest.
//!
//! This crate owns the cryptography and the exact content of every certificate and CRL that herd
//! emits. It must not know about HTTP, databases, tenants, files or async runtimes: the server
//! crate reads the clock, stores what is returned here and decides *who* may ask for *what*.
//!
//! Every instant crosses the API boundary as `i64` unix seconds (UTC); the caller reads the clock
//! and passes `now` in, so certificate content is reproducible in tests.
//!
//! Trust transitions are types: a [`VerifiedCsr`] can only be obtained by verifying a CSR's
//! self-signature and key policy, and [`CertificateAuthority::issue`] accepts nothing else as a
//! foreign public key.
//!
//! Architecture invariant: all cryptography runs on aws-lc-rs (directly, or through rcgen and
//! x509-parser built with their aws-lc-rs features); `ring` is not in the dependency tree.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod ca;
mod crl;
mod csr;
mod device_key;
mod error;
mod hex;
mod info;
mod keys;
mod leaf;
mod public_key;
pub mod sealing;
mod time_conv;

pub use ca::{CaConfig, CaKeyAlgorithm, CertificateAuthority};
pub use crl::{Crl, RevocationReason, RevokedEntry, UnknownRevocationReason};
pub use csr::{CsrError, VerifiedCsr};
pub use device_key::{DeviceKey, DeviceKeyError, MAX_DEVICE_KEY_PEM};
pub use error::PkiError;
pub use info::{parse_certificate, CertificateInfo};
pub use keys::{generate_rsa_key, DeviceKeyPair};
pub use leaf::{IssuedCertificate, LeafKey, LeafRequest};
