//! The CA certificate's profile, generate → PEM → from_pem round trips and load failures.

use herd_pki::{CaKeyAlgorithm, CertificateAuthority, LeafKey, PkiError};
use x509_parser::extensions::ParsedExtension;

use crate::support::*;

#[test]
fn ca_certificates_follow_the_profile() {
    for (label, ca) in both_cas() {
        let der = ca.certificate_der().to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(cert.subject().as_raw(), cert.issuer().as_raw(), "{label}");
        assert_eq!(ca.info().subject, "CN=herd Test CA,O=BTManagement,C=IL");
        assert_eq!(cert.validity().not_before.timestamp(), NOW);
        assert_eq!(cert.validity().not_after.timestamp(), NOW + 3650 * DAY);
        let serial = cert.raw_serial();
        assert!(serial.len() >= 8 && serial[0] & 0x80 == 0, "{label}: {serial:02x?}");

        let constraints = cert.basic_constraints().unwrap().expect("basicConstraints");
        assert!(constraints.critical && constraints.value.ca, "{label}");
        assert_eq!(constraints.value.path_len_constraint, Some(0));
        let usage = cert.key_usage().unwrap().expect("keyUsage");
        assert!(usage.critical, "{label}");
        assert!(usage.value.key_cert_sign() && usage.value.crl_sign());
        assert!(usage.value.digital_signature());

        let ski = cert.iter_extensions().find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        });
        let aki = cert.iter_extensions().find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(id) => id.key_identifier.as_ref().map(|k| k.0.to_vec()),
            _ => None,
        });
        assert!(ski.as_ref().is_some_and(|s| s.len() == 20), "{label}: {ski:?}");
        assert_eq!(aki, ski, "{label}");

        // Self-signed: x509-parser verifies the signature with the certificate's own key, and
        // webpki accepts it as a trust anchor.
        cert.verify_signature(None).unwrap();
        webpki::anchor_from_trusted_cert(&rustls_pki_types::CertificateDer::from(der.as_slice())).unwrap();
        let parsed_pem = pem::parse(ca.certificate_pem()).unwrap();
        assert_eq!(parsed_pem.tag(), "CERTIFICATE");
        assert_eq!(parsed_pem.contents(), der.as_slice());
        assert!(!ca.certificate_pem().contains('\r'), "PEM uses LF line endings");
    }
    assert_eq!(ecdsa_ca().key_description(), "ECDSA P-256");
    assert_eq!(rsa_ca().key_description(), "RSA 2048-bit");
}

#[test]
fn generate_pem_from_pem_round_trips_and_keeps_signing_compatibly() {
    for (label, ca) in both_cas() {
        let key_pem = ca.private_key_pem();
        assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{label}");
        let loaded = CertificateAuthority::from_pem(ca.certificate_pem(), &key_pem).unwrap();
        assert_eq!(loaded.certificate_der(), ca.certificate_der(), "{label}");
        assert_eq!(loaded.certificate_pem(), ca.certificate_pem(), "{label}");
        assert_eq!(loaded.info(), ca.info(), "{label}");
        // A leaf from the reloaded CA chains to the original certificate, AKI included.
        let leaf = loaded.issue(&leaf_request("reloaded"), LeafKey::Generated(device_key())).unwrap();
        webpki_verify(ca.certificate_der(), &leaf.der, NOW + DAY, None).unwrap();
        assert!(ca.verify_issued(&leaf.der));
        let original = ca.issue(&leaf_request("original"), LeafKey::Generated(device_key())).unwrap();
        let aki = |der: &[u8]| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
            let found = cert.iter_extensions().find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(id) => id.key_identifier.as_ref().map(|k| k.0.to_vec()),
                _ => None,
            });
            found
        };
        assert_eq!(aki(&leaf.der), aki(&original.der), "{label}");
        // And a CRL from the reloaded CA is accepted for the original.
        let crl = loaded.crl(&[], 1, NOW, NOW + DAY).unwrap();
        webpki_verify(ca.certificate_der(), &leaf.der, NOW + 1, Some(&crl.der)).unwrap();
    }
}

#[test]
fn another_cas_key_is_a_key_mismatch() {
    let other = CertificateAuthority::generate(&ca_config(CaKeyAlgorithm::EcdsaP256), NOW).unwrap();
    let result = CertificateAuthority::from_pem(ecdsa_ca().certificate_pem(), &other.private_key_pem());
    assert!(matches!(result, Err(PkiError::KeyMismatch)), "{result:?}");
    let result = CertificateAuthority::from_pem(ecdsa_ca().certificate_pem(), &rsa_ca().private_key_pem());
    assert!(matches!(result, Err(PkiError::KeyMismatch)), "{result:?}");
}

#[test]
fn unusable_inputs_get_clear_errors() {
    let ca = ecdsa_ca();
    let key = ca.private_key_pem();
    let leaf = ca.issue(&leaf_request("not-a-ca"), LeafKey::Generated(device_key())).unwrap();
    let result = CertificateAuthority::from_pem(&leaf.pem, &device_key().private_key_pem());
    assert!(matches!(result, Err(PkiError::NotCa(_))), "{result:?}");
    let result = CertificateAuthority::from_pem("garbage", &key);
    assert!(matches!(result, Err(PkiError::Certificate(_))), "{result:?}");
    let result = CertificateAuthority::from_pem("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n", &key);
    assert!(matches!(result, Err(PkiError::Pem(_))), "{result:?}");
    let result = CertificateAuthority::from_pem(ca.certificate_pem(), "garbage");
    assert!(matches!(result, Err(PkiError::Pem(_))), "{result:?}");
    let result = CertificateAuthority::from_pem(ca.certificate_pem(), ca.certificate_pem());
    assert!(matches!(result, Err(PkiError::Pem(_))), "{result:?}");
    for error in [PkiError::KeyMismatch, PkiError::NotCa("x".into())] {
        assert!(!error.to_string().is_empty());
    }
}

#[test]
fn key_algorithm_names_parse() {
    for (text, algorithm) in [
        ("ecdsa-p256", CaKeyAlgorithm::EcdsaP256),
        ("rsa-2048", CaKeyAlgorithm::Rsa2048),
        ("RSA-3072", CaKeyAlgorithm::Rsa3072),
        ("rsa-4096", CaKeyAlgorithm::Rsa4096),
    ] {
        assert_eq!(text.parse::<CaKeyAlgorithm>().unwrap(), algorithm);
        assert_eq!(algorithm.to_string(), text.to_ascii_lowercase());
    }
    assert!("ed25519".parse::<CaKeyAlgorithm>().is_err());
    assert_eq!(CaKeyAlgorithm::default(), CaKeyAlgorithm::EcdsaP256);
}

#[test]
fn invalid_ca_configs_are_refused() {
    let mut config = ca_config(CaKeyAlgorithm::EcdsaP256);
    config.validity_days = 0;
    assert!(matches!(CertificateAuthority::generate(&config, NOW), Err(PkiError::InvalidRequest(_))));
    let mut config = ca_config(CaKeyAlgorithm::EcdsaP256);
    config.common_name = String::new();
    assert!(matches!(CertificateAuthority::generate(&config, NOW), Err(PkiError::InvalidRequest(_))));
}
