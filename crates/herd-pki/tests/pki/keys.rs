//! Device key pairs: generation sizes, PEM round trips and the key policy on loaded keys.

use herd_pki::{generate_rsa_key, DeviceKeyPair, PkiError};

use crate::support::*;

#[test]
fn generated_keys_round_trip_through_pkcs8_pem() {
    let key = device_key();
    let pem = key.private_key_pem();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    let loaded = DeviceKeyPair::from_pem(&pem).unwrap();
    assert_eq!(loaded.public_key_der(), key.public_key_der());
    assert_eq!(loaded.key_description(), "RSA 2048-bit");
    // The SPKI is a real RSA-2048 key, per x509-parser.
    let spki_der = key.public_key_der();
    let (_, spki) =
        <x509_parser::x509::SubjectPublicKeyInfo as x509_parser::prelude::FromDer<_>>::from_der(&spki_der).unwrap();
    assert_eq!(spki.parsed().unwrap().key_size(), 2048);
    assert!(!format!("{key:?}").contains("PRIVATE"));
}

#[test]
fn only_standard_rsa_sizes_are_generated() {
    for bits in [0, 1024, 2047, 8192] {
        assert!(matches!(generate_rsa_key(bits), Err(PkiError::Unsupported(_))), "{bits}");
    }
    if std::env::var_os("HERD_PKI_SLOW_TESTS").is_some() {
        for bits in [3072, 4096] {
            let key = generate_rsa_key(bits).unwrap();
            assert_eq!(key.key_description(), format!("RSA {bits}-bit"));
        }
    }
}

#[test]
fn loaded_keys_obey_the_key_policy() {
    let ed25519 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    assert!(matches!(DeviceKeyPair::from_pem(&ed25519.serialize_pem()), Err(PkiError::Unsupported(_))));
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    assert_eq!(DeviceKeyPair::from_pem(&p384.serialize_pem()).unwrap().key_description(), "ECDSA P-384");
    assert!(matches!(DeviceKeyPair::from_pem("junk"), Err(PkiError::Pem(_))));
    assert!(matches!(DeviceKeyPair::from_pem(ecdsa_ca().certificate_pem()), Err(PkiError::Pem(_))));
}
