//! Leaf issuance, checked with rustls-webpki (chain + clientAuth) and x509-parser (fields).

use std::sync::Arc;

use herd_pki::{parse_certificate, CertificateAuthority, LeafKey, LeafRequest, PkiError, VerifiedCsr};
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_PKCS1_SHA256WITHRSA, OID_SIG_ECDSA_WITH_SHA256};
use x509_parser::x509::X509Version;

use crate::support::*;

#[test]
fn leaves_chain_to_their_ca_for_client_auth_with_both_key_sources() {
    let csr_p256 = p256_csr();
    let csr_rsa = VerifiedCsr::from_pem(&rcgen_csr_pem(&rcgen::PKCS_RSA_SHA256)).unwrap();
    let csr_p384 = VerifiedCsr::from_pem(&rcgen_csr_pem(&rcgen::PKCS_ECDSA_P384_SHA384)).unwrap();
    for (label, ca) in both_cas() {
        let keys = [
            ("generated RSA key", LeafKey::Generated(device_key())),
            ("P-256 CSR", LeafKey::Csr(&csr_p256)),
            ("RSA CSR", LeafKey::Csr(&csr_rsa)),
            ("P-384 CSR", LeafKey::Csr(&csr_p384)),
        ];
        for (key_label, key) in keys {
            let leaf = ca.issue(&leaf_request("42"), key).unwrap();
            let at = NOW + DAY;
            webpki_verify(ca.certificate_der(), &leaf.der, at, None)
                .unwrap_or_else(|error| panic!("{label}, {key_label}: {error:?}"));
            assert!(ca.verify_issued(&leaf.der), "{label}, {key_label}");
        }
    }
}

#[test]
fn webpki_rejects_leaves_outside_validity_or_from_another_ca() {
    let ca = ecdsa_ca();
    let leaf = ca.issue(&leaf_request("7"), LeafKey::Generated(device_key())).unwrap();
    assert!(matches!(
        webpki_verify(ca.certificate_der(), &leaf.der, NOW - 1, None),
        Err(webpki::Error::CertNotValidYet { .. })
    ));
    assert!(matches!(
        webpki_verify(ca.certificate_der(), &leaf.der, NOW + 366 * DAY, None),
        Err(webpki::Error::CertExpired { .. })
    ));
    // Both test CAs share a subject name, so webpki finds a candidate issuer whose key does not
    // fit the signature: it must still refuse.
    let other_ca = webpki_verify(rsa_ca().certificate_der(), &leaf.der, NOW + DAY, None);
    assert!(other_ca.is_err(), "a leaf chained to the wrong CA");
}

#[test]
fn leaves_are_client_auth_only() {
    let ca = ecdsa_ca();
    let leaf = ca.issue(&leaf_request("7"), LeafKey::Csr(&p256_csr())).unwrap();
    let anchor_der = rustls_pki_types::CertificateDer::from(ca.certificate_der());
    let anchors = [webpki::anchor_from_trusted_cert(&anchor_der).unwrap()];
    let leaf_der = rustls_pki_types::CertificateDer::from(leaf.der.as_slice());
    let end_entity = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    let result = end_entity.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs((NOW + DAY) as u64)),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    );
    let error = result.err();
    assert!(matches!(error, Some(webpki::Error::RequiredEkuNotFoundContext(_))), "{error:?}");
}

#[test]
fn leaf_fields_match_the_request_and_profile() {
    for (label, ca) in both_cas() {
        let ca_der = ca.certificate_der().to_vec();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let ca_ski = ca_cert
            .iter_extensions()
            .find_map(|extension| match extension.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(identifier) => Some(identifier.0.to_vec()),
                _ => None,
            })
            .expect("CA has a subjectKeyIdentifier");

        for (key_label, key, expect_rsa) in
            [("generated", LeafKey::Generated(device_key()), true), ("csr", LeafKey::Csr(&p256_csr()), false)]
        {
            let context = format!("{label}, {key_label}");
            let issued = ca.issue(&leaf_request("abc-123"), key).unwrap();
            let (rest, leaf) = x509_parser::parse_x509_certificate(&issued.der).unwrap();
            assert!(rest.is_empty());
            assert_eq!(leaf.version(), X509Version::V3, "{context}");

            // Subject and issuer, by attribute.
            let text = |iter: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
                iter.next().unwrap().as_str().unwrap().to_string()
            };
            assert_eq!(text(&mut leaf.subject().iter_common_name()), "Device-abc-123");
            assert_eq!(text(&mut leaf.subject().iter_organization()), "BTManagement");
            assert_eq!(text(&mut leaf.subject().iter_country()), "IL");
            assert_eq!(leaf.issuer().as_raw(), ca_cert.subject().as_raw(), "{context}");

            // Serial: positive, at least 64 bits, 16 octets, and what info reports.
            let serial = leaf.raw_serial();
            assert_eq!(serial.len(), 16, "{context}: serial {serial:02x?}");
            assert!(serial[0] & 0x80 == 0 && serial[0] != 0, "{context}");
            assert_eq!(issued.info.serial_hex, leaf.raw_serial_as_string().replace(':', ""));

            // Validity exactly as requested.
            assert_eq!(leaf.validity().not_before.timestamp(), NOW);
            assert_eq!(leaf.validity().not_after.timestamp(), NOW + 365 * DAY);
            assert_eq!(issued.info.not_before, NOW);
            assert_eq!(issued.info.not_after, NOW + 365 * DAY);

            // Signature algorithm follows the CA key.
            let expected_signature =
                if label.starts_with("rsa") { OID_PKCS1_SHA256WITHRSA } else { OID_SIG_ECDSA_WITH_SHA256 };
            assert_eq!(leaf.signature_algorithm.algorithm, expected_signature, "{context}");

            // Extensions.
            let constraints = leaf.basic_constraints().unwrap().expect("basicConstraints");
            assert!(!constraints.value.ca, "{context}");
            let key_usage = leaf.key_usage().unwrap().expect("keyUsage");
            assert!(key_usage.critical, "{context}");
            assert!(key_usage.value.digital_signature(), "{context}");
            assert_eq!(key_usage.value.key_encipherment(), expect_rsa, "{context}");
            assert!(!key_usage.value.key_cert_sign() && !key_usage.value.crl_sign());
            let eku = leaf.extended_key_usage().unwrap().expect("extendedKeyUsage");
            assert!(eku.value.client_auth && !eku.value.server_auth && !eku.value.any);
            assert!(eku.value.other.is_empty(), "{context}");

            let mut ski = None;
            let mut aki = None;
            let mut crl_urls = Vec::new();
            for extension in leaf.extensions() {
                match extension.parsed_extension() {
                    ParsedExtension::SubjectKeyIdentifier(identifier) => ski = Some(identifier.0.to_vec()),
                    ParsedExtension::AuthorityKeyIdentifier(identifier) => {
                        aki = identifier.key_identifier.as_ref().map(|id| id.0.to_vec())
                    }
                    ParsedExtension::CRLDistributionPoints(points) => {
                        for point in points.iter() {
                            if let Some(DistributionPointName::FullName(names)) = &point.distribution_point {
                                for name in names {
                                    if let GeneralName::URI(uri) = name {
                                        crl_urls.push(uri.to_string());
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            // RFC 7093 method 1: leftmost 160 bits of SHA-256 over the subjectPublicKey bits.
            let digest =
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &leaf.public_key().subject_public_key.data);
            assert_eq!(ski.as_deref(), Some(&digest.as_ref()[..20]), "{context}: SKI");
            assert_eq!(aki.as_deref(), Some(ca_ski.as_slice()), "{context}: AKI != CA SKI");
            assert_eq!(crl_urls, ["http://herd.example.test/ca/crl"], "{context}");
        }
    }
}

#[test]
fn info_matches_an_independent_reading() {
    let ca = rsa_ca();
    let issued = ca.issue(&leaf_request("info"), LeafKey::Generated(device_key())).unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &issued.der);
    let expected: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(issued.info.fingerprint_sha256, expected);
    assert_eq!(issued.info.subject, "CN=Device-info,O=BTManagement,C=IL");
    assert_eq!(issued.info.issuer, "CN=herd Test CA,O=BTManagement,C=IL");
    assert_eq!(ca.info().subject, ca.info().issuer);

    assert_eq!(parse_certificate(issued.pem.as_bytes()).unwrap(), issued.info);
    assert_eq!(parse_certificate(&issued.der).unwrap(), issued.info);
    assert!(parse_certificate(b"not a certificate").is_err());
    assert!(parse_certificate(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
    let mut trailing = issued.der.clone();
    trailing.push(0);
    assert!(parse_certificate(&trailing).is_err());
}

#[test]
fn no_crl_distribution_point_when_not_asked_and_serials_are_unique() {
    let ca = ecdsa_ca();
    let request = LeafRequest { crl_distribution_url: None, ..leaf_request("1") };
    let first = ca.issue(&request, LeafKey::Generated(device_key())).unwrap();
    let second = ca.issue(&request, LeafKey::Generated(device_key())).unwrap();
    assert_ne!(first.info.serial_hex, second.info.serial_hex);
    let (_, leaf) = x509_parser::parse_x509_certificate(&first.der).unwrap();
    assert!(!leaf
        .extensions()
        .iter()
        .any(|e| matches!(e.parsed_extension(), ParsedExtension::CRLDistributionPoints(_))));
}

#[test]
fn verify_issued_checks_the_signature_only_against_this_ca() {
    let issued = ecdsa_ca().issue(&leaf_request("sig"), LeafKey::Generated(device_key())).unwrap();
    assert!(ecdsa_ca().verify_issued(&issued.der));
    assert!(!rsa_ca().verify_issued(&issued.der));
    // Flip a bit inside the subject: the structure still parses, the signature no longer fits.
    let position = issued.der.windows(b"Device-sig".len()).position(|window| window == b"Device-sig").unwrap();
    let mut tampered = issued.der.clone();
    tampered[position] ^= 0x01;
    assert!(x509_parser::parse_x509_certificate(&tampered).is_ok());
    assert!(!ecdsa_ca().verify_issued(&tampered));
    assert!(!ecdsa_ca().verify_issued(b"garbage"));
    // The CA certificate is self-signed, so it verifies against itself.
    assert!(ecdsa_ca().verify_issued(ecdsa_ca().certificate_der()));
}

#[test]
fn invalid_requests_are_refused_with_invalid_request() {
    let ca = ecdsa_ca();
    let key = LeafKey::Generated(device_key());
    let cases = [
        LeafRequest { common_name: String::new(), ..leaf_request("x") },
        LeafRequest { common_name: "x".repeat(65), ..leaf_request("x") },
        LeafRequest { country: "ISR".to_string(), ..leaf_request("x") },
        LeafRequest { country: "1L".to_string(), ..leaf_request("x") },
        LeafRequest { validity_days: 0, ..leaf_request("x") },
        LeafRequest { not_before: i64::MAX - 10, ..leaf_request("x") },
        LeafRequest { crl_distribution_url: Some("ftp://x/crl".into()), ..leaf_request("x") },
        LeafRequest { crl_distribution_url: Some("http://a b/crl".into()), ..leaf_request("x") },
        LeafRequest { organization: "bad\nname".to_string(), ..leaf_request("x") },
    ];
    for request in cases {
        let result = ca.issue(&request, key);
        assert!(matches!(result, Err(PkiError::InvalidRequest(_))), "{request:?} gave {result:?}");
    }
    // Empty organization and country are omitted rather than refused.
    let bare = LeafRequest { organization: String::new(), country: String::new(), ..leaf_request("bare") };
    assert_eq!(ca.issue(&bare, key).unwrap().info.subject, "CN=Device-bare");
}

#[test]
fn one_ca_issues_from_many_threads() {
    let ca: Arc<CertificateAuthority> =
        Arc::new(CertificateAuthority::generate(&ca_config(herd_pki::CaKeyAlgorithm::EcdsaP256), NOW).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|thread| {
            let ca = Arc::clone(&ca);
            std::thread::spawn(move || {
                let csr = p256_csr();
                let leaf = ca.issue(&leaf_request(&thread.to_string()), LeafKey::Csr(&csr)).unwrap();
                webpki_verify(ca.certificate_der(), &leaf.der, NOW + DAY, None).unwrap();
                leaf.info.serial_hex
            })
        })
        .collect();
    let mut serials: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 4);
}
