//! A device-held public key: what a device registers so that it can later prove it is the same
//! device (a signature over a single-use challenge) without any secret that ships in its image.
//!
//! The key policy is the CSR policy ([`crate::public_key::classify`]: RSA of 2048 to 8192 bits,
//! ECDSA P-256 or P-384), and each key type has exactly one signature scheme, so a device and
//! herd never negotiate: RSA signs with PKCS#1 v1.5 and SHA-256, P-256 with ECDSA and SHA-256,
//! P-384 with ECDSA and SHA-384 (ECDSA signatures DER-encoded, as OpenSSL, Android's keystore
//! and Java's `Signature` produce them).

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::public_key::{classify, KeyKind, KeyRejection};

/// Largest PEM text accepted for a device key (an RSA-8192 SPKI is about 1.5 KB).
pub const MAX_DEVICE_KEY_PEM: usize = 4096;

/// A device's public key that passed herd's key policy, kept as SubjectPublicKeyInfo DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKey {
    spki_der: Vec<u8>,
    kind: KeyKind,
}

/// Why a device key or a signature by it was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceKeyError {
    /// Not one `PUBLIC KEY` PEM block holding a SubjectPublicKeyInfo.
    #[error("{0}")]
    Malformed(String),
    /// A key type or size herd does not accept.
    #[error("{0}")]
    Policy(String),
    /// The signature does not verify with this key.
    #[error("the signature does not verify with the device's registered key")]
    BadSignature,
}

impl DeviceKey {
    /// Parses a `-----BEGIN PUBLIC KEY-----` PEM block (SubjectPublicKeyInfo) and applies the
    /// key policy.
    pub fn from_pem(text: &str) -> Result<DeviceKey, DeviceKeyError> {
        if text.len() > MAX_DEVICE_KEY_PEM {
            return Err(DeviceKeyError::Malformed(format!("longer than {MAX_DEVICE_KEY_PEM} characters")));
        }
        let block = pem::parse(text.trim()).map_err(|e| DeviceKeyError::Malformed(format!("not a PEM block: {e}")))?;
        if block.tag() != "PUBLIC KEY" {
            return Err(DeviceKeyError::Malformed(format!(
                "expected a \"PUBLIC KEY\" PEM block (SubjectPublicKeyInfo), got \"{}\"",
                block.tag()
            )));
        }
        Self::from_der(block.contents())
    }

    /// Applies the key policy to SubjectPublicKeyInfo DER.
    pub fn from_der(der: &[u8]) -> Result<DeviceKey, DeviceKeyError> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(der)
            .map_err(|_| DeviceKeyError::Malformed("the SubjectPublicKeyInfo does not parse".into()))?;
        if !rest.is_empty() {
            return Err(DeviceKeyError::Malformed("trailing bytes after the SubjectPublicKeyInfo".into()));
        }
        let kind = classify(&spki).map_err(|rejection| match rejection {
            KeyRejection::Weak(message) | KeyRejection::Unsupported(message) => DeviceKeyError::Policy(message),
            KeyRejection::Malformed(message) => DeviceKeyError::Malformed(message),
        })?;
        Ok(DeviceKey { spki_der: der.to_vec(), kind })
    }

    /// The key as a `PUBLIC KEY` PEM block (what herd stores and shows).
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki_der.clone()))
    }

    /// A short description, e.g. "ECDSA P-256".
    pub fn describe(&self) -> String {
        self.kind.describe()
    }

    /// Verifies `signature` over `message` with this key's one signature scheme.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), DeviceKeyError> {
        let algorithm: &'static dyn VerificationAlgorithm = match self.kind {
            KeyKind::Rsa { .. } => &signature::RSA_PKCS1_2048_8192_SHA256,
            KeyKind::EcdsaP256 => &signature::ECDSA_P256_SHA256_ASN1,
            KeyKind::EcdsaP384 => &signature::ECDSA_P384_SHA384_ASN1,
        };
        let (_, spki) = SubjectPublicKeyInfo::from_der(&self.spki_der)
            .map_err(|_| DeviceKeyError::Malformed("the stored key does not parse".into()))?;
        UnparsedPublicKey::new(algorithm, &spki.subject_public_key.data)
            .verify(message, signature)
            .map_err(|_| DeviceKeyError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_pem(algorithm: &'static rcgen::SignatureAlgorithm) -> (rcgen::KeyPair, String) {
        let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
        let pem = key.public_key_pem();
        (key, pem)
    }

    #[test]
    fn a_signature_by_the_key_verifies_and_nothing_else_does() {
        for algorithm in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384] {
            let (pair, pem) = key_pem(algorithm);
            let key = DeviceKey::from_pem(&pem).unwrap();
            let signature = rcgen::SigningKey::sign(&pair, b"herd-register-v1.abc").unwrap();
            assert_eq!(key.verify(b"herd-register-v1.abc", &signature), Ok(()));
            assert_eq!(key.verify(b"herd-register-v1.abd", &signature), Err(DeviceKeyError::BadSignature));
            let (_, other) = key_pem(algorithm);
            let other = DeviceKey::from_pem(&other).unwrap();
            assert_eq!(other.verify(b"herd-register-v1.abc", &signature), Err(DeviceKeyError::BadSignature));
            assert_eq!(DeviceKey::from_pem(&key.to_pem()).unwrap(), key, "PEM round trip");
        }
    }

    #[test]
    fn keys_outside_the_policy_and_other_blocks_are_refused() {
        let (_, ed25519) = key_pem(&rcgen::PKCS_ED25519);
        assert!(matches!(DeviceKey::from_pem(&ed25519), Err(DeviceKeyError::Policy(_))));
        assert!(matches!(DeviceKey::from_pem("not pem"), Err(DeviceKeyError::Malformed(_))));
        let certificate = pem::encode(&pem::Pem::new("CERTIFICATE", vec![0x30, 0x00]));
        assert!(matches!(DeviceKey::from_pem(&certificate), Err(DeviceKeyError::Malformed(_))));
        let garbage = pem::encode(&pem::Pem::new("PUBLIC KEY", vec![1, 2, 3]));
        assert!(matches!(DeviceKey::from_pem(&garbage), Err(DeviceKeyError::Malformed(_))));
        assert!(matches!(DeviceKey::from_pem(&"A".repeat(5000)), Err(DeviceKeyError::Malformed(_))));
    }
}
