//! Writes a sample CA certificate, a leaf from each key source and a CRL into a directory, so
//! external linters (pkilint in CI) can check what herd-pki emits:
//! `cargo run -p herd-pki --example write_samples -- DIR`.
// Test and example code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use herd_pki::{CaConfig, CaKeyAlgorithm, CertificateAuthority, LeafKey, LeafRequest, RevocationReason, RevokedEntry};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or("usage: write_samples DIR")?);
    std::fs::create_dir_all(&dir)?;
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())?;
    for algorithm in [CaKeyAlgorithm::EcdsaP256, CaKeyAlgorithm::Rsa2048] {
        let prefix = algorithm.as_str();
        let ca = CertificateAuthority::generate(
            &CaConfig {
                common_name: "herd Device CA".to_string(),
                organization: "BTManagement".to_string(),
                country: "IL".to_string(),
                validity_days: 3650,
                key_algorithm: algorithm,
            },
            now,
        )?;
        std::fs::write(dir.join(format!("{prefix}-ca.pem")), ca.certificate_pem())?;
        let request = LeafRequest {
            common_name: "Device-3f1c2a9e-0000-4000-8000-000000000001".to_string(),
            organization: "BTManagement".to_string(),
            country: "IL".to_string(),
            not_before: now,
            validity_days: 365,
            crl_distribution_url: Some("http://herd.example.com/ca/crl".to_string()),
        };
        let device_key = herd_pki::generate_rsa_key(2048)?;
        let leaf = ca.issue(&request, LeafKey::Generated(&device_key))?;
        std::fs::write(dir.join(format!("{prefix}-leaf-rsa.pem")), &leaf.pem)?;
        let csr_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let csr_pem = rcgen::CertificateParams::default().serialize_request(&csr_key)?.pem()?;
        let csr = herd_pki::VerifiedCsr::from_pem(&csr_pem)?;
        let leaf_ec = ca.issue(&request, LeafKey::Csr(&csr))?;
        std::fs::write(dir.join(format!("{prefix}-leaf-ec.pem")), &leaf_ec.pem)?;
        let crl = ca.crl(
            &[
                RevokedEntry {
                    serial_hex: leaf.info.serial_hex.clone(),
                    revoked_at: now,
                    reason: RevocationReason::KeyCompromise,
                },
                RevokedEntry {
                    serial_hex: leaf_ec.info.serial_hex.clone(),
                    revoked_at: now,
                    reason: RevocationReason::Unspecified,
                },
            ],
            1,
            now,
            now + 7 * 86_400,
        )?;
        std::fs::write(dir.join(format!("{prefix}-crl.pem")), &crl.pem)?;
        std::fs::write(dir.join(format!("{prefix}-crl.der")), &crl.der)?;
    }
    println!("wrote samples to {}", dir.display());
    Ok(())
}
