//! Shared fixtures: a fixed clock, CAs generated once per test binary, and independent verifiers.

use std::sync::OnceLock;
use std::time::Duration;

use herd_pki::{CaConfig, CaKeyAlgorithm, CertificateAuthority, DeviceKeyPair, LeafRequest, VerifiedCsr};
use rustls_pki_types::{CertificateDer, UnixTime};

/// 2026-01-01T00:00:00Z: the "now" every fixture is made at.
pub(crate) const NOW: i64 = 1_767_225_600;
/// One day, in seconds.
pub(crate) const DAY: i64 = 86_400;

pub(crate) fn ca_config(algorithm: CaKeyAlgorithm) -> CaConfig {
    CaConfig {
        common_name: "herd Test CA".to_string(),
        organization: "BTManagement".to_string(),
        country: "IL".to_string(),
        validity_days: 3650,
        key_algorithm: algorithm,
    }
}

/// An ECDSA P-256 CA, generated once.
pub(crate) fn ecdsa_ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate(&ca_config(CaKeyAlgorithm::EcdsaP256), NOW).unwrap())
}

/// An RSA-2048 CA, generated once.
pub(crate) fn rsa_ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate(&ca_config(CaKeyAlgorithm::Rsa2048), NOW).unwrap())
}

/// Both CAs with a label for assertion messages.
pub(crate) fn both_cas() -> [(&'static str, &'static CertificateAuthority); 2] {
    [("ecdsa-p256 CA", ecdsa_ca()), ("rsa-2048 CA", rsa_ca())]
}

/// A generated RSA-2048 device key, made once.
pub(crate) fn device_key() -> &'static DeviceKeyPair {
    static KEY: OnceLock<DeviceKeyPair> = OnceLock::new();
    KEY.get_or_init(|| herd_pki::generate_rsa_key(2048).unwrap())
}

pub(crate) fn leaf_request(device: &str) -> LeafRequest {
    LeafRequest {
        common_name: format!("Device-{device}"),
        organization: "BTManagement".to_string(),
        country: "IL".to_string(),
        not_before: NOW,
        validity_days: 365,
        crl_distribution_url: Some("http://herd.example.test/ca/crl".to_string()),
    }
}

/// A CSR made by rcgen (not herd-pki) for a key of `algorithm`, with a subject and SAN that
/// herd must ignore.
pub(crate) fn rcgen_csr_pem(algorithm: &'static rcgen::SignatureAlgorithm) -> String {
    let key = if algorithm == &rcgen::PKCS_RSA_SHA256 {
        rcgen::KeyPair::generate_rsa_for(algorithm, rcgen::RsaKeySize::_2048).unwrap()
    } else {
        rcgen::KeyPair::generate_for(algorithm).unwrap()
    };
    let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "admin");
    params.serialize_request(&key).unwrap().pem().unwrap()
}

pub(crate) fn p256_csr() -> VerifiedCsr {
    VerifiedCsr::from_pem(&rcgen_csr_pem(&rcgen::PKCS_ECDSA_P256_SHA256)).unwrap()
}

/// Verifies `leaf` as a client-authentication end entity chained directly to `ca` at `at`
/// (unix seconds), with rustls-webpki and optionally a CRL.
pub(crate) fn webpki_verify(
    ca_der: &[u8],
    leaf_der: &[u8],
    at: i64,
    crl_der: Option<&[u8]>,
) -> Result<(), webpki::Error> {
    let ca = CertificateDer::from(ca_der);
    let anchor = webpki::anchor_from_trusted_cert(&ca)?;
    let leaf = CertificateDer::from(leaf_der);
    let end_entity = webpki::EndEntityCert::try_from(&leaf)?;
    let crl =
        crl_der.map(webpki::BorrowedCertRevocationList::from_der).transpose()?.map(webpki::CertRevocationList::from);
    let crls: Vec<&webpki::CertRevocationList<'_>> = crl.iter().collect();
    let revocation = if crls.is_empty() {
        None
    } else {
        Some(
            webpki::RevocationOptionsBuilder::new(&crls)
                .unwrap()
                .with_status_policy(webpki::UnknownStatusPolicy::Deny)
                .build(),
        )
    };
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(at as u64)),
            webpki::KeyUsage::client_auth(),
            revocation,
            None,
        )
        .map(|_| ())
}

/// The CSR fixtures made with `openssl req` (see fixtures/).
pub(crate) fn fixture(name: &str) -> String {
    let path = format!("{}/tests/pki/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}
