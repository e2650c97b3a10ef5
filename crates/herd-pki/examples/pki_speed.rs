//! Times herd-pki's hot paths: RSA-2048 device key generation, leaf signing (generated key and
//! CSR) for an ECDSA P-256 CA and an RSA-2048 CA, and building a CRL of 10,000 entries.
//! `cargo run --release -p herd-pki --example pki_speed`
// Test and example code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use herd_pki::{
    CaConfig, CaKeyAlgorithm, CertificateAuthority, LeafKey, LeafRequest, RevocationReason, RevokedEntry, VerifiedCsr,
};

const NOW: i64 = 1_767_225_600;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<T>(runs: usize, mut operation: impl FnMut() -> T) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(operation());
                start.elapsed()
            })
            .collect(),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keygen = time(20, || herd_pki::generate_rsa_key(2048));
    println!("RSA-2048 key generation            median {keygen:>10.2?}  (20 runs)");

    let device_key = herd_pki::generate_rsa_key(2048)?;
    let csr_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr_pem = rcgen::CertificateParams::default().serialize_request(&csr_key)?.pem()?;
    let verify = time(200, || VerifiedCsr::from_pem(&csr_pem));
    println!("CSR parse + verify (P-256)         median {verify:>10.2?}  (200 runs)");
    let csr = VerifiedCsr::from_pem(&csr_pem)?;
    let request = LeafRequest {
        common_name: "Device-3f1c2a9e-0000-4000-8000-000000000001".to_string(),
        organization: "BTManagement".to_string(),
        country: "IL".to_string(),
        not_before: NOW,
        validity_days: 365,
        crl_distribution_url: Some("https://herd.example.com/ca/crl".to_string()),
    };

    for algorithm in [CaKeyAlgorithm::EcdsaP256, CaKeyAlgorithm::Rsa2048] {
        let config = CaConfig {
            common_name: "herd Device CA".to_string(),
            organization: "BTManagement".to_string(),
            country: "IL".to_string(),
            validity_days: 3650,
            key_algorithm: algorithm,
        };
        let ca = CertificateAuthority::generate(&config, NOW)?;
        let name = algorithm.as_str();
        let generated = time(500, || ca.issue(&request, LeafKey::Generated(&device_key)));
        let from_csr = time(500, || ca.issue(&request, LeafKey::Csr(&csr)));
        println!("{name:>10} CA: sign leaf, generated key median {generated:>10.2?}  (500 runs)");
        println!("{name:>10} CA: sign leaf, CSR key       median {from_csr:>10.2?}  (500 runs)");

        let entries: Vec<RevokedEntry> = (0..10_000u128)
            .map(|n| RevokedEntry {
                serial_hex: format!("{:032x}", n | (1 << 126)),
                revoked_at: NOW + n as i64,
                reason: if n % 2 == 0 { RevocationReason::Superseded } else { RevocationReason::Unspecified },
            })
            .collect();
        let mut size = 0;
        let crl = time(10, || {
            let crl = ca.crl(&entries, 42, NOW, NOW + 86_400);
            size = crl.as_ref().map(|crl| crl.der.len()).unwrap_or(0);
            crl
        });
        println!("{name:>10} CA: CRL of 10,000 entries    median {crl:>10.2?}  (10 runs, {size} bytes DER)");
    }
    Ok(())
}
