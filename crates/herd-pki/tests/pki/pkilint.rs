//! pkilint (PyPI `pkilint`) over a CA certificate, leaves from both key sources and a CRL, for
//! both CA key types. Gated by `HERD_PKI_LINT=1` because it needs the Python tool installed;
//! CI sets it after `pip install pkilint`. Fails on any finding of WARNING or above (the only
//! finding below that is INFO `subject_key_identifier_rfc7093_method_1_identified`).

use std::path::Path;
use std::process::Command;

use herd_pki::{LeafKey, RevocationReason, RevokedEntry};

use crate::support::*;

fn lint(program: &str, args: &[&str], file: &Path) {
    let output = Command::new(program)
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|error| panic!("HERD_PKI_LINT is set but {program} cannot run: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim().is_empty(),
        "{program} on {}:\n{stdout}{}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn pkilint_finds_nothing_at_warning_or_above() {
    if std::env::var_os("HERD_PKI_LINT").is_none() {
        eprintln!("SKIPPED: set HERD_PKI_LINT=1 (with pkilint installed) to lint herd-pki's output");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let csr = p256_csr();
    for (label, ca) in both_cas() {
        let generated = ca.issue(&leaf_request("lint"), LeafKey::Generated(device_key())).unwrap();
        let from_csr = ca.issue(&leaf_request("lint"), LeafKey::Csr(&csr)).unwrap();
        let crl = ca
            .crl(
                &[
                    RevokedEntry {
                        serial_hex: generated.info.serial_hex.clone(),
                        revoked_at: NOW + 1,
                        reason: RevocationReason::KeyCompromise,
                    },
                    RevokedEntry {
                        serial_hex: from_csr.info.serial_hex.clone(),
                        revoked_at: NOW + 2,
                        reason: RevocationReason::Unspecified,
                    },
                ],
                2,
                NOW + 3,
                NOW + 7 * DAY,
            )
            .unwrap();
        for (name, pem) in
            [("ca", ca.certificate_pem()), ("leaf-generated", &generated.pem), ("leaf-csr", &from_csr.pem)]
        {
            let path = dir.path().join(format!("{label}-{name}.pem"));
            std::fs::write(&path, pem).unwrap();
            lint("lint_pkix_cert", &["lint", "-s", "WARNING"], &path);
        }
        let path = dir.path().join(format!("{label}-crl.pem"));
        std::fs::write(&path, &crl.pem).unwrap();
        lint("lint_crl", &["lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING"], &path);
    }
}
