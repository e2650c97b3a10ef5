//! CSR verification: accepted key types, and each refusal with its error variant.

use herd_pki::{CsrError, LeafKey, VerifiedCsr};

use crate::support::*;

#[test]
fn accepts_rsa_2048_p256_and_p384_csrs() {
    for (algorithm, description) in [
        (&rcgen::PKCS_RSA_SHA256, "RSA 2048-bit"),
        (&rcgen::PKCS_ECDSA_P256_SHA256, "ECDSA P-256"),
        (&rcgen::PKCS_ECDSA_P384_SHA384, "ECDSA P-384"),
    ] {
        let pem = rcgen_csr_pem(algorithm);
        let csr = VerifiedCsr::from_pem(&pem).unwrap_or_else(|e| panic!("{description}: {e}"));
        assert_eq!(csr.key_description(), description);
        assert_eq!(csr.requested_subject(), "CN=admin");
        let der = pem::parse(&pem).unwrap().into_contents();
        assert_eq!(VerifiedCsr::from_der(&der).unwrap().key_description(), description);
    }
}

#[test]
fn rsa_1024_is_a_weak_key() {
    let result = VerifiedCsr::from_pem(&fixture("rsa1024.csr.pem"));
    assert!(matches!(result, Err(CsrError::WeakKey(_))), "{result:?}");
    let message = result.unwrap_err().to_string();
    assert!(message.contains("1024") && message.contains("2048"), "{message}");
}

#[test]
fn ed25519_and_p521_are_unsupported_keys() {
    let ed25519_openssl = VerifiedCsr::from_pem(&fixture("ed25519.csr.pem"));
    assert!(
        matches!(ed25519_openssl, Err(CsrError::UnsupportedKey(ref m)) if m.contains("Ed25519")),
        "{ed25519_openssl:?}"
    );
    let ed25519_rcgen = VerifiedCsr::from_pem(&rcgen_csr_pem(&rcgen::PKCS_ED25519));
    assert!(matches!(ed25519_rcgen, Err(CsrError::UnsupportedKey(_))), "{ed25519_rcgen:?}");
    let p521 = VerifiedCsr::from_pem(&fixture("p521.csr.pem"));
    assert!(matches!(p521, Err(CsrError::UnsupportedKey(ref m)) if m.contains("P-521")), "{p521:?}");
}

#[test]
fn sha1_signatures_are_refused() {
    let result = VerifiedCsr::from_pem(&fixture("rsa2048-sha1.csr.pem"));
    assert!(matches!(result, Err(CsrError::UnsupportedSignatureAlgorithm(_))), "{result:?}");
}

#[test]
fn tampered_csrs_have_bad_signatures() {
    for algorithm in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_RSA_SHA256] {
        let der = pem::parse(rcgen_csr_pem(algorithm)).unwrap().into_contents();
        assert!(VerifiedCsr::from_der(&der).is_ok());

        // A flipped bit in the signature value (the last byte of the request).
        let mut signature_tampered = der.clone();
        *signature_tampered.last_mut().unwrap() ^= 0x01;
        let result = VerifiedCsr::from_der(&signature_tampered);
        assert_eq!(result.unwrap_err(), CsrError::BadSignature);

        // A changed subject: "admin" becomes "bdmin"; the signature no longer covers it.
        let position = der.windows(5).position(|w| w == b"admin").unwrap();
        let mut body_tampered = der.clone();
        body_tampered[position] = b'b';
        assert_eq!(VerifiedCsr::from_der(&body_tampered).unwrap_err(), CsrError::BadSignature);
    }
}

#[test]
fn garbage_is_malformed() {
    let inputs = [
        "".to_string(),
        "hello".to_string(),
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".to_string(),
        // A certificate is not a request.
        ecdsa_ca().certificate_pem().to_string(),
    ];
    for input in inputs {
        let result = VerifiedCsr::from_pem(&input);
        assert!(matches!(result, Err(CsrError::Malformed(_))), "{input:?}: {result:?}");
    }
    assert!(matches!(VerifiedCsr::from_der(b"\x30\x03\x02\x01\x00"), Err(CsrError::Malformed(_))));
    let mut trailing = pem::parse(rcgen_csr_pem(&rcgen::PKCS_ECDSA_P256_SHA256)).unwrap().into_contents();
    trailing.extend_from_slice(b"extra");
    assert!(matches!(VerifiedCsr::from_der(&trailing), Err(CsrError::Malformed(_))));
}

#[test]
fn error_messages_read_as_sentences() {
    for error in [
        CsrError::Malformed("x".into()),
        CsrError::BadSignature,
        CsrError::WeakKey("x".into()),
        CsrError::UnsupportedKey("x".into()),
        CsrError::UnsupportedSignatureAlgorithm("x".into()),
    ] {
        let message = error.to_string();
        assert!(message.starts_with("the certificate signing request"), "{message}");
    }
}

#[test]
fn only_the_public_key_of_a_csr_reaches_the_certificate() {
    let pem = rcgen_csr_pem(&rcgen::PKCS_ECDSA_P256_SHA256);
    let csr = VerifiedCsr::from_pem(&pem).unwrap();
    let issued = ecdsa_ca().issue(&leaf_request("csr"), LeafKey::Csr(&csr)).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&issued.der).unwrap();
    let csr_der = pem::parse(&pem).unwrap().into_contents();
    let (_, request) =
        <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(
            &csr_der,
        )
        .unwrap();
    assert_eq!(leaf.public_key().raw, request.certification_request_info.subject_pki.raw);
    assert_eq!(issued.info.subject, "CN=Device-csr,O=BTManagement,C=IL");
    assert!(leaf.subject_alternative_name().unwrap().is_none(), "the CSR's SAN leaked");
}
