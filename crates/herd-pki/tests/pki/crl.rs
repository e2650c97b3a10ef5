//! CRLs, read back with x509-parser and enforced by rustls-webpki.

use herd_pki::{LeafKey, PkiError, RevocationReason, RevokedEntry};
use x509_parser::extensions::ParsedExtension;
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::x509::X509Version;

use crate::support::*;

fn parse(der: &[u8]) -> CertificateRevocationList<'_> {
    let (rest, crl) = x509_parser::parse_x509_crl(der).unwrap();
    assert!(rest.is_empty());
    crl
}

#[test]
fn crl_lists_entries_with_reasons_and_is_signed_by_the_ca() {
    for (label, ca) in both_cas() {
        let revoked_leaf = ca.issue(&leaf_request("revoked"), LeafKey::Generated(device_key())).unwrap();
        let good_leaf = ca.issue(&leaf_request("good"), LeafKey::Generated(device_key())).unwrap();
        let entries = vec![
            RevokedEntry {
                serial_hex: revoked_leaf.info.serial_hex.clone(),
                revoked_at: NOW + 10,
                reason: RevocationReason::KeyCompromise,
            },
            RevokedEntry {
                serial_hex: "0a0b0c".to_string(),
                revoked_at: NOW + 20,
                reason: RevocationReason::Unspecified,
            },
            RevokedEntry {
                serial_hex: "7F:FF".to_string(),
                revoked_at: NOW + 30,
                reason: RevocationReason::CessationOfOperation,
            },
        ];
        let crl = ca.crl(&entries, 17, NOW + 60, NOW + 7 * DAY).unwrap();
        assert!(crl.pem.starts_with("-----BEGIN X509 CRL-----"));
        assert_eq!(pem::parse(&crl.pem).unwrap().contents(), crl.der.as_slice());
        assert!(!crl.pem.contains('\r'), "PEM uses LF line endings");

        let parsed = parse(&crl.der);
        assert_eq!(parsed.version(), Some(X509Version::V2), "{label}");
        let ca_der = ca.certificate_der().to_vec();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(parsed.issuer().as_raw(), ca_cert.subject().as_raw());
        assert_eq!(parsed.last_update().timestamp(), NOW + 60);
        assert_eq!(parsed.next_update().unwrap().timestamp(), NOW + 7 * DAY);
        assert_eq!(parsed.crl_number().unwrap().to_string(), "17");
        parsed.verify_signature(ca_cert.public_key()).unwrap();
        assert!(parsed.verify_signature(&rsa_or_other(ca)).is_err());

        let ca_ski = ca_cert.iter_extensions().find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        });
        let crl_aki = parsed.extensions().iter().find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(id) => id.key_identifier.as_ref().map(|k| k.0.to_vec()),
            _ => None,
        });
        assert_eq!(crl_aki, ca_ski, "{label}");

        let listed: Vec<(String, i64, Option<u8>)> = parsed
            .iter_revoked_certificates()
            .map(|entry| {
                (
                    entry.raw_serial_as_string().replace(':', ""),
                    entry.revocation_date.timestamp(),
                    entry.reason_code().map(|(_, code)| code.0),
                )
            })
            .collect();
        assert_eq!(
            listed,
            vec![
                (revoked_leaf.info.serial_hex.clone(), NOW + 10, Some(1)),
                ("0a0b0c".to_string(), NOW + 20, None),
                ("7fff".to_string(), NOW + 30, Some(5)),
            ],
            "{label}"
        );

        // rustls-webpki enforces it: the revoked leaf fails, the other passes.
        let at = NOW + 120;
        assert!(matches!(
            webpki_verify(ca.certificate_der(), &revoked_leaf.der, at, Some(&crl.der)),
            Err(webpki::Error::CertRevoked)
        ));
        webpki_verify(ca.certificate_der(), &good_leaf.der, at, Some(&crl.der)).unwrap();
    }
}

fn rsa_or_other(ca: &herd_pki::CertificateAuthority) -> x509_parser::x509::SubjectPublicKeyInfo<'static> {
    let other = if std::ptr::eq(ca, ecdsa_ca()) { rsa_ca() } else { ecdsa_ca() };
    let der: &'static [u8] = other.certificate_der();
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.tbs_certificate.subject_pki
}

#[test]
fn empty_crl_omits_revoked_certificates() {
    let crl = ecdsa_ca().crl(&[], 1, NOW, NOW + DAY).unwrap();
    let parsed = parse(&crl.der);
    assert_eq!(parsed.iter_revoked_certificates().count(), 0);
    assert_eq!(parsed.crl_number().unwrap().to_string(), "1");
}

#[test]
fn large_crl_numbers_and_many_entries() {
    let entries: Vec<RevokedEntry> = (1..=500u32)
        .map(|n| RevokedEntry {
            serial_hex: format!("{:032x}", u128::from(n) | (1 << 126)),
            revoked_at: NOW,
            reason: RevocationReason::Superseded,
        })
        .collect();
    let crl = rsa_ca().crl(&entries, u64::MAX, NOW, NOW + DAY).unwrap();
    let parsed = parse(&crl.der);
    assert_eq!(parsed.iter_revoked_certificates().count(), 500);
    assert_eq!(parsed.crl_number().unwrap().to_string(), u64::MAX.to_string());
}

#[test]
fn bad_crl_requests_are_refused() {
    let ca = ecdsa_ca();
    assert!(matches!(ca.crl(&[], 1, NOW, NOW), Err(PkiError::InvalidRequest(_))));
    let bad = RevokedEntry { serial_hex: "not hex".to_string(), revoked_at: NOW, reason: RevocationReason::Superseded };
    assert!(matches!(ca.crl(&[bad], 1, NOW, NOW + DAY), Err(PkiError::InvalidRequest(_))));
}
