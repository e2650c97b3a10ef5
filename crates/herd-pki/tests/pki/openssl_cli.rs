//! Interoperability with the `openssl` CLI (OpenSSL 3): it verifies our leaves and CRLs, makes
//! CSRs we must accept, and makes a CA (with PKCS#1 / SEC1 keys) we must be able to load.
//!
//! Each test skips, saying so on stderr, when /usr/bin/openssl is absent.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use herd_pki::{CertificateAuthority, LeafKey, RevocationReason, RevokedEntry, VerifiedCsr};

use crate::support::*;

const OPENSSL: &str = "/usr/bin/openssl";

fn openssl_available() -> bool {
    if Path::new(OPENSSL).exists() {
        true
    } else {
        eprintln!("SKIPPED: {OPENSSL} is not installed, so the OpenSSL interoperability test did not run");
        false
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Output {
    let output = Command::new(OPENSSL).args(args).current_dir(dir).output().expect("run openssl");
    output
}

fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let output = openssl(dir, args);
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "openssl {args:?} failed:\n{text}");
    text
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn at(seconds: i64) -> String {
    seconds.to_string()
}

#[test]
fn openssl_verifies_leaves_for_client_auth() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let csr = p256_csr();
    for (label, ca) in both_cas() {
        write(dir.path(), "ca.pem", ca.certificate_pem());
        for (key_label, key) in [("generated", LeafKey::Generated(device_key())), ("csr", LeafKey::Csr(&csr))] {
            let leaf = ca.issue(&leaf_request("ossl"), key).unwrap();
            write(dir.path(), "leaf.pem", &leaf.pem);
            let text = openssl_ok(
                dir.path(),
                &[
                    "verify",
                    "-x509_strict",
                    "-purpose",
                    "sslclient",
                    "-attime",
                    &at(NOW + DAY),
                    "-CAfile",
                    "ca.pem",
                    "leaf.pem",
                ],
            );
            assert!(text.contains("leaf.pem: OK"), "{label}, {key_label}: {text}");

            // And it can fail: outside the validity window openssl says so.
            let expired =
                openssl(dir.path(), &["verify", "-attime", &at(NOW + 400 * DAY), "-CAfile", "ca.pem", "leaf.pem"]);
            assert!(!expired.status.success(), "{label}, {key_label}");
        }
    }
}

#[test]
fn openssl_verifies_crls_and_enforces_revocation() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (label, ca) in both_cas() {
        let revoked = ca.issue(&leaf_request("gone"), LeafKey::Generated(device_key())).unwrap();
        let kept = ca.issue(&leaf_request("kept"), LeafKey::Generated(device_key())).unwrap();
        let crl = ca
            .crl(
                &[RevokedEntry {
                    serial_hex: revoked.info.serial_hex.clone(),
                    revoked_at: NOW + 5,
                    reason: RevocationReason::Superseded,
                }],
                3,
                NOW + 10,
                NOW + 7 * DAY,
            )
            .unwrap();
        write(dir.path(), "ca.pem", ca.certificate_pem());
        write(dir.path(), "crl.pem", &crl.pem);
        std::fs::write(dir.path().join("crl.der"), &crl.der).unwrap();
        write(dir.path(), "revoked.pem", &revoked.pem);
        write(dir.path(), "kept.pem", &kept.pem);

        let text = openssl_ok(dir.path(), &["crl", "-verify", "-noout", "-CAfile", "ca.pem", "-in", "crl.pem"]);
        assert!(text.contains("verify OK"), "{label}: {text}");
        let text = openssl_ok(dir.path(), &["crl", "-inform", "DER", "-in", "crl.der", "-noout", "-text"]);
        assert!(text.contains("Superseded") && text.contains("CRL Number"), "{label}: {text}");

        let check = |leaf: &str| {
            openssl(
                dir.path(),
                &["verify", "-crl_check", "-CRLfile", "crl.pem", "-attime", &at(NOW + DAY), "-CAfile", "ca.pem", leaf],
            )
        };
        assert!(check("kept.pem").status.success(), "{label}");
        let output = check("revoked.pem");
        let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && text.contains("revoked"), "{label}: {text}");
    }
}

#[test]
fn csrs_made_by_openssl_are_accepted_and_certified() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, newkey) in [
        ("p256", vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        ("p384", vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"]),
        ("rsa", vec!["-newkey", "rsa:2048"]),
    ] {
        let csr_file = format!("{name}.csr");
        let mut args = vec!["req", "-new", "-nodes", "-keyout", "/dev/null", "-subj", "/CN=from-openssl"];
        args.extend(newkey);
        args.extend(["-out", &csr_file]);
        openssl_ok(dir.path(), &args);
        let text = openssl_ok(dir.path(), &["req", "-verify", "-noout", "-in", &csr_file]);
        assert!(text.contains("verify OK"), "{text}");

        let pem = std::fs::read_to_string(dir.path().join(&csr_file)).unwrap();
        let csr = VerifiedCsr::from_pem(&pem).unwrap_or_else(|e| panic!("{name}: {e}"));
        let leaf = ecdsa_ca().issue(&leaf_request(name), LeafKey::Csr(&csr)).unwrap();
        write(dir.path(), "ca.pem", ecdsa_ca().certificate_pem());
        write(dir.path(), "leaf.pem", &leaf.pem);
        openssl_ok(dir.path(), &["verify", "-attime", &at(NOW + DAY), "-CAfile", "ca.pem", "leaf.pem"]);
        let csr_key = openssl_ok(dir.path(), &["req", "-in", &csr_file, "-noout", "-pubkey"]);
        let leaf_key = openssl_ok(dir.path(), &["x509", "-in", "leaf.pem", "-noout", "-pubkey"]);
        assert_eq!(csr_key, leaf_key, "{name}");
    }
}

#[test]
fn cas_made_by_openssl_load_and_issue_verifiable_leaves() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let make_ca = [
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-days",
        "3650",
        "-subj",
        "/C=IL/O=Legacy/CN=Legacy CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        "ca.pem",
    ];
    for (label, make_key) in [
        ("RSA PKCS#1", vec!["genrsa", "-traditional", "-out", "ca.key", "2048"]),
        ("EC SEC1", vec!["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"]),
        ("RSA PKCS#8", vec!["genpkey", "-algorithm", "RSA", "-out", "ca.key"]),
    ] {
        openssl_ok(dir.path(), &make_key);
        openssl_ok(dir.path(), &make_ca);
        let cert_pem = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
        let key_pem = std::fs::read_to_string(dir.path().join("ca.key")).unwrap();
        let ca = CertificateAuthority::from_pem(&cert_pem, &key_pem).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert!(ca.private_key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let request = herd_pki::LeafRequest { not_before: now - 60, ..leaf_request("legacy") };
        let leaf = ca.issue(&request, LeafKey::Generated(device_key())).unwrap();
        write(dir.path(), "leaf.pem", &leaf.pem);
        let text = openssl_ok(
            dir.path(),
            &["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", "ca.pem", "leaf.pem"],
        );
        assert!(text.contains("leaf.pem: OK"), "{label}: {text}");
        let crl = ca.crl(&[], 1, now - 60, now + DAY).unwrap();
        write(dir.path(), "crl.pem", &crl.pem);
        openssl_ok(dir.path(), &["crl", "-verify", "-noout", "-CAfile", "ca.pem", "-in", "crl.pem"]);
        openssl_ok(dir.path(), &["verify", "-crl_check", "-CRLfile", "crl.pem", "-CAfile", "ca.pem", "leaf.pem"]);
    }
}
