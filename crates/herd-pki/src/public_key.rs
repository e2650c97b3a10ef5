//! Public-key policy and signature verification, shared by CSR verification, device key loading
//! and [`crate::CertificateAuthority::verify_issued`].
//!
//! Owns the one list of key types herd accepts (RSA of at least 2048 bits, ECDSA on P-256 or
//! P-384) and the one list of signature algorithms it will verify. It verifies with aws-lc-rs
//! directly rather than through x509-parser's `verify_signature`, because that one also accepts
//! SHA-1 and Ed25519 signatures, which herd's policy rejects.

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_SHA256WITHRSA,
    OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
    OID_SIG_ED25519, OID_SIG_ED448,
};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// Smallest RSA modulus herd accepts, in bits.
pub(crate) const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus herd accepts, in bits (aws-lc-rs verifies up to 8192).
pub(crate) const MAX_RSA_BITS: usize = 8192;

/// A public key that passed herd's key policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// RSA with the given modulus length in bits.
    Rsa { bits: usize },
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
}

impl KeyKind {
    /// A short human description, e.g. "RSA 2048-bit" or "ECDSA P-256".
    pub(crate) fn describe(self) -> String {
        match self {
            KeyKind::Rsa { bits } => format!("RSA {bits}-bit"),
            KeyKind::EcdsaP256 => "ECDSA P-256".to_string(),
            KeyKind::EcdsaP384 => "ECDSA P-384".to_string(),
        }
    }

    /// Whether the key is RSA (RSA leaves also get keyUsage keyEncipherment).
    pub(crate) fn is_rsa(self) -> bool {
        matches!(self, KeyKind::Rsa { .. })
    }
}

/// Why a public key was refused by the key policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyRejection {
    /// A supported algorithm, but too weak.
    Weak(String),
    /// An algorithm or curve herd does not accept.
    Unsupported(String),
    /// The key bytes do not parse.
    Malformed(String),
}

/// Applies herd's key policy to a SubjectPublicKeyInfo.
pub(crate) fn classify(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyKind, KeyRejection> {
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(KeyRejection::Malformed("the RSA public key does not parse".to_string()));
        };
        let bits = significant_bits(rsa.modulus);
        if bits < MIN_RSA_BITS {
            return Err(KeyRejection::Weak(format!(
                "RSA key of {bits} bits is too small; at least {MIN_RSA_BITS} bits are required"
            )));
        }
        if bits > MAX_RSA_BITS {
            return Err(KeyRejection::Unsupported(format!(
                "RSA key of {bits} bits is larger than the supported maximum of {MAX_RSA_BITS} bits"
            )));
        }
        return Ok(KeyKind::Rsa { bits });
    }
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki.algorithm.parameters.as_ref().and_then(|parameters| parameters.as_oid().ok());
        return match curve {
            Some(curve) if curve == OID_EC_P256 => Ok(KeyKind::EcdsaP256),
            Some(curve) if curve == OID_NIST_EC_P384 => Ok(KeyKind::EcdsaP384),
            Some(curve) => Err(KeyRejection::Unsupported(format!(
                "elliptic curve {} is not supported; use P-256 or P-384",
                curve_name(&curve)
            ))),
            None => {
                Err(KeyRejection::Unsupported("elliptic-curve keys must name their curve (P-256 or P-384)".to_string()))
            }
        };
    }
    Err(KeyRejection::Unsupported(format!(
        "{} keys are not supported; use RSA (2048 bits or more) or ECDSA P-256/P-384",
        algorithm_name(algorithm)
    )))
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SignatureFailure {
    /// The signature algorithm is not one herd verifies, or does not fit the key.
    UnsupportedAlgorithm(String),
    /// The signature is wrong.
    Invalid,
}

/// Verifies `signature` over `message` with the key in `spki` (already classified as `kind`),
/// using the algorithm named by `signature_algorithm`.
pub(crate) fn verify(
    kind: KeyKind,
    spki: &SubjectPublicKeyInfo<'_>,
    signature_algorithm: &Oid<'_>,
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureFailure> {
    let algorithm = verification_algorithm(kind, signature_algorithm)?;
    UnparsedPublicKey::new(algorithm, &spki.subject_public_key.data)
        .verify(message, signature)
        .map_err(|_| SignatureFailure::Invalid)
}

fn verification_algorithm(
    kind: KeyKind,
    signature_algorithm: &Oid<'_>,
) -> Result<&'static dyn VerificationAlgorithm, SignatureFailure> {
    let oid = signature_algorithm;
    let algorithm: Option<&'static dyn VerificationAlgorithm> = match kind {
        KeyKind::Rsa { .. } if *oid == OID_PKCS1_SHA256WITHRSA => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
        KeyKind::Rsa { .. } if *oid == OID_PKCS1_SHA384WITHRSA => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
        KeyKind::Rsa { .. } if *oid == OID_PKCS1_SHA512WITHRSA => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
        KeyKind::EcdsaP256 if *oid == OID_SIG_ECDSA_WITH_SHA256 => Some(&signature::ECDSA_P256_SHA256_ASN1),
        KeyKind::EcdsaP256 if *oid == OID_SIG_ECDSA_WITH_SHA384 => Some(&signature::ECDSA_P256_SHA384_ASN1),
        KeyKind::EcdsaP384 if *oid == OID_SIG_ECDSA_WITH_SHA256 => Some(&signature::ECDSA_P384_SHA256_ASN1),
        KeyKind::EcdsaP384 if *oid == OID_SIG_ECDSA_WITH_SHA384 => Some(&signature::ECDSA_P384_SHA384_ASN1),
        _ => None,
    };
    algorithm.ok_or_else(|| {
        SignatureFailure::UnsupportedAlgorithm(format!(
            "signature algorithm {} is not accepted for an {} key (use SHA-256 or stronger)",
            algorithm_name(oid),
            kind.describe()
        ))
    })
}

/// Number of significant bits in a big-endian unsigned integer (leading zero bytes ignored).
fn significant_bits(big_endian: &[u8]) -> usize {
    let mut bytes = big_endian;
    while let [0, rest @ ..] = bytes {
        bytes = rest;
    }
    match bytes.first() {
        None => 0,
        Some(first) => (bytes.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
    }
}

/// A readable name for the algorithm OIDs a user is likely to send us, else the dotted OID.
fn algorithm_name(oid: &Oid<'_>) -> String {
    if *oid == OID_SIG_ED25519 {
        "Ed25519".to_string()
    } else if *oid == OID_SIG_ED448 {
        "Ed448".to_string()
    } else if *oid == OID_PKCS1_RSAENCRYPTION {
        "RSA".to_string()
    } else {
        match oid.to_id_string().as_str() {
            "1.2.840.10040.4.1" => "DSA".to_string(),
            "1.3.101.110" => "X25519".to_string(),
            "1.3.101.111" => "X448".to_string(),
            "1.2.840.113549.1.1.10" => "RSASSA-PSS".to_string(),
            "1.2.840.113549.1.1.5" => "sha1WithRSAEncryption".to_string(),
            "1.2.840.10045.4.1" => "ecdsa-with-SHA1".to_string(),
            other => format!("OID {other}"),
        }
    }
}

fn curve_name(oid: &Oid<'_>) -> String {
    match oid.to_id_string().as_str() {
        "1.3.132.0.35" => "P-521".to_string(),
        "1.3.132.0.10" => "secp256k1".to_string(),
        other => format!("OID {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::significant_bits;

    #[test]
    fn significant_bits_ignores_leading_zero_bytes() {
        assert_eq!(significant_bits(&[]), 0);
        assert_eq!(significant_bits(&[0, 0]), 0);
        assert_eq!(significant_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(significant_bits(&[0x01, 0xff]), 9);
    }
}
