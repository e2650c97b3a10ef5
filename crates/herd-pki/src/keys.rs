//! Device key pairs: RSA generation for server-generated device keys, and loading of private keys
//! from PEM (also used for the CA key), normalised to PKCS#8.
//!
//! Owns the rule that every private key this crate holds passed the key policy in
//! [`crate::public_key`]. It must not decide where keys are stored or how they are protected at
//! rest (see [`crate::sealing`] for the primitive the server uses for that).

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING};
use rcgen::{KeyPair, PublicKeyData, RsaKeySize, PKCS_RSA_SHA256};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;
use zeroize::Zeroizing;

use crate::public_key::{self, KeyKind, KeyRejection};
use crate::PkiError;

/// A device's private key (RSA, or ECDSA P-256/P-384 when loaded from PEM) that passed herd's
/// key policy. The secret is never printed by `Debug`.
pub struct DeviceKeyPair {
    /// The key in the form rcgen signs with and serialises; its DER is always PKCS#8.
    pub(crate) key: KeyPair,
    /// What the public half is, for keyUsage and for messages.
    pub(crate) kind: KeyKind,
}

/// Generates a fresh RSA key pair with aws-lc-rs. `bits` must be 2048, 3072 or 4096.
pub fn generate_rsa_key(bits: u32) -> Result<DeviceKeyPair, PkiError> {
    let size = match bits {
        2048 => RsaKeySize::_2048,
        3072 => RsaKeySize::_3072,
        4096 => RsaKeySize::_4096,
        other => return Err(PkiError::Unsupported(format!("RSA key size {other}; choose 2048, 3072 or 4096 bits"))),
    };
    let key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, size)
        .map_err(|error| PkiError::Crypto(format!("RSA key generation failed: {error}")))?;
    let kind = KeyKind::Rsa { bits: bits as usize };
    Ok(DeviceKeyPair { key, kind })
}

impl DeviceKeyPair {
    /// The private key as PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----").
    pub fn private_key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Loads a private key from PEM: PKCS#8 ("PRIVATE KEY"), PKCS#1 ("RSA PRIVATE KEY") or SEC1
    /// ("EC PRIVATE KEY"). The key must satisfy the same policy as CSR keys: RSA of at least
    /// 2048 bits, or ECDSA on P-256 or P-384.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let key = key_pair_from_pem(pem)?;
        let kind = key_kind(&key)?;
        Ok(DeviceKeyPair { key, kind })
    }

    /// A short description such as "RSA 2048-bit" or "ECDSA P-256".
    pub fn key_description(&self) -> String {
        self.kind.describe()
    }

    /// The public key as a DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }
}

impl fmt::Debug for DeviceKeyPair {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("DeviceKeyPair").field("kind", &self.kind).finish_non_exhaustive()
    }
}

/// Parses the first private key block in `pem` into an rcgen key pair whose serialised form is
/// PKCS#8, whatever the input encoding was (rcgen would otherwise keep PKCS#1/SEC1 bytes and
/// label them "PRIVATE KEY" on output).
pub(crate) fn key_pair_from_pem(pem: &str) -> Result<KeyPair, PkiError> {
    let blocks = pem::parse_many(pem).map_err(|error| PkiError::Pem(error.to_string()))?;
    let block = blocks
        .into_iter()
        .find(|block| block.tag().ends_with("PRIVATE KEY"))
        .ok_or_else(|| PkiError::Pem("no PRIVATE KEY block found".to_string()))?;
    let tag = block.tag().to_string();
    let der = Zeroizing::new(block.into_contents());
    let pkcs8: Zeroizing<Vec<u8>> = match tag.as_str() {
        "PRIVATE KEY" => der,
        "RSA PRIVATE KEY" => {
            let rsa = aws_lc_rs::rsa::KeyPair::from_der(&der)
                .map_err(|error| PkiError::PrivateKey(format!("PKCS#1 RSA key rejected: {error}")))?;
            let encoded = rsa.as_der().map_err(|_| PkiError::PrivateKey("could not re-encode RSA key".to_string()))?;
            Zeroizing::new(encoded.as_ref().to_vec())
        }
        "EC PRIVATE KEY" => {
            let ec = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, &der)
                .or_else(|_| EcdsaKeyPair::from_private_key_der(&ECDSA_P384_SHA384_ASN1_SIGNING, &der))
                .map_err(|_| PkiError::PrivateKey("SEC1 EC key is malformed or not on P-256/P-384".to_string()))?;
            let encoded =
                ec.to_pkcs8v1().map_err(|_| PkiError::PrivateKey("could not re-encode EC key".to_string()))?;
            Zeroizing::new(encoded.as_ref().to_vec())
        }
        "ENCRYPTED PRIVATE KEY" => {
            return Err(PkiError::PrivateKey(
                "encrypted private keys are not supported; decrypt the key first".to_string(),
            ))
        }
        other => return Err(PkiError::PrivateKey(format!("unsupported PEM block \"{other}\""))),
    };
    KeyPair::try_from(pkcs8.as_slice())
        .map_err(|error| PkiError::PrivateKey(format!("key is malformed or of an unsupported kind: {error}")))
}

/// Applies the key policy to a loaded key pair.
pub(crate) fn key_kind(key: &KeyPair) -> Result<KeyKind, PkiError> {
    let spki_der = key.subject_public_key_info();
    let (_, spki) = SubjectPublicKeyInfo::from_der(&spki_der)
        .map_err(|error| PkiError::PrivateKey(format!("public key does not encode: {error}")))?;
    public_key::classify(&spki).map_err(|rejection| match rejection {
        KeyRejection::Weak(message) | KeyRejection::Unsupported(message) | KeyRejection::Malformed(message) => {
            PkiError::Unsupported(message)
        }
    })
}
