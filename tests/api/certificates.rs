//! Certificates: issuance (server key and CSR), inventory, renewal, revocation and the CRL,
//! validation, the monitor's time travel, tenancy, restarts and both key stores.
//!
//! Every test runs four times: SQLite and PostgreSQL (when `HERD_TEST_DATABASE_URL` is set),
//! each with the `file` and the `database` key store. What herd emits is checked by code that
//! did not make it: rustls-webpki (chain, client-auth EKU, CRL revocation) and x509-parser.

use std::time::Duration as StdDuration;

use chrono::Duration;
use herd::certificates::monitor::{self, MonitorOutcome};
use herd::certificates::CertificateService;
use herd::clock::{to_millis, Clock};
use herd::config::{CertStoreKind, Settings};
use herd::store::Db;
use reqwest::{Method, StatusCode};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{json, Value};
use x509_parser::extensions::ParsedExtension;

use crate::helpers::{expect_json, expect_problem, spawn_app_with, Engine, SpawnOptions, TestApp, ADMIN_TOKEN};

/// Generates, for each test, `sqlite_file::NAME`, `sqlite_database::NAME` and (with
/// `HERD_TEST_DATABASE_URL`) `postgres_file::NAME`, `postgres_database::NAME`.
macro_rules! certificate_tests {
    ($(async fn $name:ident($app:ident) $body:block)*) => {
        certificate_tests!(@variant sqlite_file, Sqlite, File; $(async fn $name($app) $body)*);
        certificate_tests!(@variant sqlite_database, Sqlite, Database; $(async fn $name($app) $body)*);
        certificate_tests!(@variant postgres_file, Postgres, File; $(async fn $name($app) $body)*);
        certificate_tests!(@variant postgres_database, Postgres, Database; $(async fn $name($app) $body)*);
    };
    (@variant $module:ident, $engine:ident, $store:ident; $(async fn $name:ident($app:ident) $body:block)*) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if Engine::$engine == Engine::Postgres && !crate::helpers::postgres_variant_runs() {
                        return;
                    }
                    let $app = spawn(Engine::$engine, CertStoreKind::$store).await;
                    $body
                }
            )*
        }
    };
}

async fn spawn(engine: Engine, store: CertStoreKind) -> TestApp {
    spawn_app_with(
        engine,
        SpawnOptions {
            adjust: Box::new(move |settings: &mut Settings| {
                settings.cert_store = store;
                // Keys on demand: a pool thread per test app would only burn shared CPU.
                settings.cert_key_pool_size = 0;
                settings.public_url = Some("https://herd.example.com".into());
            }),
            ..Default::default()
        },
    )
    .await
}

fn s(value: &Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}")).to_string()
}

/// A device of the admin's tenant; answers `(id, device token)`.
async fn device(app: &TestApp, admin: &str, name: &str) -> (String, String) {
    let body = expect_json(app.post("/devices", admin, json!({ "name": name })).await, StatusCode::CREATED).await;
    (s(&body["device"]["id"]), s(&body["deviceToken"]))
}

/// Issues a certificate (no body: server key; `Some({csr})`: the device's key).
async fn issue(app: &TestApp, admin: &str, device_id: &str, body: Option<Value>) -> Value {
    let path = format!("/devices/{device_id}/certificates");
    expect_json(app.request(Method::POST, &path, Some(admin), body).await, StatusCode::CREATED).await
}

fn csr(algorithm: &'static rcgen::SignatureAlgorithm) -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate_for(algorithm).expect("key");
    let params = rcgen::CertificateParams::new(vec!["device.local".to_string()]).expect("params");
    let pem = params.serialize_request(&key).expect("csr").pem().expect("pem");
    (key, pem)
}

fn fixture(name: &str) -> String {
    let path = format!("{}/crates/herd-pki/tests/pki/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn der(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).expect("PEM").into_contents()
}

async fn ca_der(app: &TestApp) -> Vec<u8> {
    let response = app.request(Method::GET, "/ca/certificate?format=der", None, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/pkix-cert");
    response.bytes().await.expect("body").to_vec()
}

async fn crl_der(app: &TestApp) -> Vec<u8> {
    let response = app.request(Method::GET, "/ca/crl", None, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/pkix-crl");
    response.bytes().await.expect("body").to_vec()
}

fn now_seconds(app: &TestApp) -> i64 {
    app.clock.now().timestamp()
}

/// rustls-webpki: chain to the CA, validity at `at`, client-auth EKU, and the CRL if given.
fn webpki_verify(ca: &[u8], leaf: &[u8], at: i64, crl: Option<&[u8]>) -> Result<(), webpki::Error> {
    let ca = CertificateDer::from(ca);
    let anchor = webpki::anchor_from_trusted_cert(&ca)?;
    let leaf = CertificateDer::from(leaf);
    let end_entity = webpki::EndEntityCert::try_from(&leaf)?;
    let crl = crl.map(webpki::BorrowedCertRevocationList::from_der).transpose()?.map(webpki::CertRevocationList::from);
    let crls: Vec<&webpki::CertRevocationList<'_>> = crl.iter().collect();
    let revocation = if crls.is_empty() {
        None
    } else {
        Some(
            webpki::RevocationOptionsBuilder::new(&crls)
                .expect("crls")
                .with_status_policy(webpki::UnknownStatusPolicy::Deny)
                .build(),
        )
    };
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::since_unix_epoch(StdDuration::from_secs(at as u64)),
            webpki::KeyUsage::client_auth(),
            revocation,
            None,
        )
        .map(|_| ())
}

/// A second herd "instance" on the same data directory and database, for calling the monitor's
/// step directly (the server's own monitor runs on the wall-clock interval).
async fn instance(app: &TestApp) -> (CertificateService, Db) {
    let (db, _system) = Db::open(&app.settings.database_url).await.expect("db");
    let service = CertificateService::start(&db, &app.settings, to_millis(app.clock.now())).await.expect("service");
    (service, db)
}

/// The events of one type once `expected` of them are visible. On PostgreSQL an event becomes
/// readable only when every older transaction in the cluster has ended (see `events`), so this
/// polls briefly; it then waits a little longer to catch an unexpected extra event.
async fn events(app: &TestApp, kind: &str, expected: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + StdDuration::from_secs(10);
    loop {
        let body =
            expect_json(app.get(&format!("/events?type={kind}&limit=500"), ADMIN_TOKEN).await, StatusCode::OK).await;
        let items = body["items"].as_array().expect("items").clone();
        if items.len() >= expected || std::time::Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(StdDuration::from_millis(100)).await;
    }
}

fn extensions(cert: &x509_parser::certificate::X509Certificate<'_>) -> (bool, bool, Option<String>) {
    let mut ski = false;
    let mut aki = false;
    let mut crl_dp = None;
    for extension in cert.extensions() {
        match extension.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(_) => ski = true,
            ParsedExtension::AuthorityKeyIdentifier(id) => aki = id.key_identifier.is_some(),
            ParsedExtension::CRLDistributionPoints(points) => {
                crl_dp = Some(format!("{points:?}"));
            }
            _ => {}
        }
    }
    (ski, aki, crl_dp)
}

certificate_tests! {
    async fn a_server_key_certificate_is_a_proper_client_certificate(app) {
        let (device_id, _) = device(&app, ADMIN_TOKEN, "Lobby").await;
        let body = issue(&app, ADMIN_TOKEN, &device_id, None).await;
        let record = &body["certificate"];
        assert_eq!(record["deviceId"], device_id.as_str());
        assert_eq!(record["status"], "active");
        assert_eq!(record["keySource"], "server");
        assert_eq!(record["revokedAt"], Value::Null);
        assert_eq!(record["replacedById"], Value::Null);
        let certificate_pem = s(&body["certificatePem"]);
        let key_pem = s(&body["privateKeyPem"]);
        assert!(body["caCertificatePem"].as_str().unwrap().contains("BEGIN CERTIFICATE"));

        // rustls-webpki: chains to the CA served at /ca/certificate, for TLS client auth.
        let ca = ca_der(&app).await;
        let leaf = der(&certificate_pem);
        webpki_verify(&ca, &leaf, now_seconds(&app) + 60, None).expect("webpki accepts the leaf");

        // x509-parser: the profile.
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).expect("x509");
        let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_string();
        assert_eq!(cn, format!("Device-{device_id}"));
        assert_eq!(cert.subject().iter_organization().next().unwrap().as_str().unwrap(), "BTManagement");
        assert_eq!(cert.subject().iter_country().next().unwrap().as_str().unwrap(), "IL");
        let serial = cert.raw_serial();
        assert!(serial[0] & 0x80 == 0, "serial is positive");
        assert!(serial.iter().skip_while(|b| **b == 0).count() >= 8, "serial has at least 64 bits");
        assert_eq!(record["serialNumber"], hex::encode(serial.iter().skip_while(|b| **b == 0).copied().collect::<Vec<_>>()));
        assert!(!cert.basic_constraints().unwrap().expect("basicConstraints").value.ca);
        let key_usage = cert.key_usage().unwrap().expect("keyUsage").value;
        assert!(key_usage.digital_signature() && !key_usage.key_cert_sign());
        assert!(cert.extended_key_usage().unwrap().expect("EKU").value.client_auth);
        let (ski, aki, crl_dp) = extensions(&cert);
        assert!(ski && aki, "subject and authority key identifiers");
        assert!(crl_dp.expect("CRL distribution point").contains("https://herd.example.com/ca/crl"));
        let validity = cert.validity();
        assert_eq!(validity.not_after.timestamp() - validity.not_before.timestamp(), 365 * 86_400);
        assert_eq!(validity.not_before.timestamp(), now_seconds(&app));

        // The private key belongs to the certificate and is RSA 2048.
        let key = rcgen::KeyPair::from_pem(&key_pem).expect("PKCS#8 key");
        assert_eq!(rcgen::PublicKeyData::subject_public_key_info(&key), cert.public_key().raw);
        match cert.public_key().parsed().expect("spki") {
            x509_parser::public_key::PublicKey::RSA(rsa) => assert_eq!(rsa.key_size(), 2048),
            other => panic!("expected RSA, got {other:?}"),
        }

        // The record, as stored and listed; and its event.
        let id = s(&record["id"]);
        let fetched = expect_json(app.get(&format!("/certificates/{id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(&fetched, record);
        let listed = expect_json(app.get(&format!("/devices/{device_id}/certificates"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(listed["items"][0]["id"], id.as_str());
        let issued = events(&app, "certificate.issued", 1).await;
        assert_eq!(issued.len(), 1);
        assert_eq!(issued[0]["data"]["certificateId"], id.as_str());

        // Where the key went.
        let base = app.data_dir().join("certificates/devices");
        let key_file = base.join(format!("private/{device_id}-key.pem"));
        let cert_file = base.join(format!("public/{device_id}-cert.pem"));
        match app.settings.cert_store {
            CertStoreKind::File => {
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key_pem);
                assert_eq!(std::fs::read_to_string(&cert_file).unwrap(), certificate_pem);
                assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
            }
            CertStoreKind::Database => {
                assert!(!key_file.exists() && !cert_file.exists(), "database mode writes no key files");
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(std::fs::metadata(app.data_dir().join("kek")).unwrap().permissions().mode() & 0o777, 0o600);
            }
        }
        use std::os::unix::fs::PermissionsExt;
        let ca_key = app.data_dir().join("certificates/ca-key.pem");
        assert_eq!(std::fs::metadata(&ca_key).unwrap().permissions().mode() & 0o777, 0o600);
    }

    async fn the_ca_certificate_is_a_proper_ca(app) {
        let ca = ca_der(&app).await;
        let (_, cert) = x509_parser::parse_x509_certificate(&ca).expect("x509");
        assert!(cert.basic_constraints().unwrap().expect("basicConstraints").value.ca);
        let usage = cert.key_usage().unwrap().expect("keyUsage").value;
        assert!(usage.key_cert_sign() && usage.crl_sign());
        assert!(extensions(&cert).0, "subject key identifier");
        let pem = app.request(Method::GET, "/ca/certificate", None, None).await;
        assert_eq!(pem.headers()["content-type"], "application/x-pem-file");
        assert_eq!(der(&pem.text().await.unwrap()), ca);
    }

    async fn csrs_are_signed_after_verification_and_weak_ones_refused(app) {
        let (device_id, _) = device(&app, ADMIN_TOKEN, "Kiosk").await;
        let ca = ca_der(&app).await;
        for algorithm in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_RSA_SHA256] {
            let (key, pem) = csr(algorithm);
            let body = issue(&app, ADMIN_TOKEN, &device_id, Some(json!({ "csr": pem }))).await;
            assert_eq!(body["certificate"]["keySource"], "csr");
            assert!(body.get("privateKeyPem").is_none(), "no private key for a CSR: {body}");
            let leaf = der(&s(&body["certificatePem"]));
            webpki_verify(&ca, &leaf, now_seconds(&app) + 60, None).expect("webpki accepts the CSR leaf");
            let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
            assert_eq!(rcgen::PublicKeyData::subject_public_key_info(&key), cert.public_key().raw, "the CSR's key is certified");
            let cn = cert.subject().iter_common_name().next().unwrap().as_str().unwrap().to_string();
            assert_eq!(cn, format!("Device-{device_id}"), "the subject is herd's, not the CSR's");
        }

        let path = format!("/devices/{device_id}/certificates");
        let (_, good) = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        // Tamper with the signature: the last base64 characters before the footer.
        let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
        let last = lines.len() - 2;
        let mut chars: Vec<char> = lines[last].chars().collect();
        let at = chars.len().saturating_sub(4);
        chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
        lines[last] = chars.into_iter().collect();
        let tampered = lines.join("\n");
        let cases = [
            (fixture("rsa1024.csr.pem"), "weak"),
            (fixture("ed25519.csr.pem"), "not supported"),
            (fixture("p521.csr.pem"), "not supported"),
            (fixture("rsa2048-sha1.csr.pem"), "signature algorithm"),
            ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".to_string(), "parsed"),
            ("hello".to_string(), "parsed"),
            (tampered, "signature"),
        ];
        for (pem, why) in cases {
            let problem = expect_problem(app.post(&path, ADMIN_TOKEN, json!({ "csr": pem })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
            assert_eq!(problem["errors"][0]["field"], "csr");
            let message = problem["errors"][0]["message"].as_str().unwrap();
            assert!(message.contains(why), "expected {why:?} in {message:?}");
        }
        let listed = expect_json(app.get(&path, ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(listed["items"].as_array().unwrap().len(), 3, "nothing was signed for a refused CSR");
    }

    async fn the_key_file_always_matches_the_certificate_file(app) {
        // Security finding 13: a CSR certificate used to leave the previous server key beside it.
        let (device_id, _) = device(&app, ADMIN_TOKEN, "Pair").await;
        let base = app.data_dir().join("certificates/devices");
        let key_file = base.join(format!("private/{device_id}-key.pem"));
        let cert_file = base.join(format!("public/{device_id}-cert.pem"));
        let server = issue(&app, ADMIN_TOKEN, &device_id, None).await;
        let (_, pem) = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        let own = issue(&app, ADMIN_TOKEN, &device_id, Some(json!({ "csr": pem }))).await;
        if app.settings.cert_store == CertStoreKind::File {
            assert_eq!(std::fs::read_to_string(&cert_file).unwrap(), s(&own["certificatePem"]));
            assert!(!key_file.exists(), "no key file beside a CSR certificate");
            // And a server key afterwards brings back a matching pair.
            let again = issue(&app, ADMIN_TOKEN, &device_id, None).await;
            let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
            let leaf = der(&std::fs::read_to_string(&cert_file).unwrap());
            let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
            assert_eq!(rcgen::PublicKeyData::subject_public_key_info(&key), cert.public_key().raw);
            assert_eq!(s(&again["certificatePem"]), std::fs::read_to_string(&cert_file).unwrap());
        } else {
            assert!(!key_file.exists() && !cert_file.exists(), "database mode writes no files");
        }
        assert_eq!(server["certificate"]["keySource"], "server");
    }

    async fn a_burst_of_crl_requests_signs_one_crl(app) {
        // Security finding 3: costly work behind an unauthenticated route is bounded. A stale
        // CRL asked for by many clients at once is signed once; they all get that one.
        crl_der(&app).await;
        app.clock.advance(Duration::days(5)); // past nextUpdate minus the refresh margin
        let requests = (0..16).map(|_| crl_der(&app));
        let crls = futures::future::join_all(requests).await;
        let numbers: std::collections::BTreeSet<_> =
            crls.iter().map(|crl| x509_parser::parse_x509_crl(crl).unwrap().1.crl_number().cloned()).collect();
        assert_eq!(numbers.len(), 1, "one signature for the burst: {numbers:?}");
    }

    async fn revocation_is_final_and_the_crl_lists_it(app) {
        let (device_id, _) = device(&app, ADMIN_TOKEN, "Screen").await;
        let (_, csr_pem) = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        let revoked = issue(&app, ADMIN_TOKEN, &device_id, Some(json!({ "csr": csr_pem }))).await;
        let kept = issue(&app, ADMIN_TOKEN, &device_id, None).await;
        let id = s(&revoked["certificate"]["id"]);
        let ca = ca_der(&app).await;
        let before = crl_der(&app).await;
        webpki_verify(&ca, &der(&s(&revoked["certificatePem"])), now_seconds(&app) + 1, Some(&before)).expect("not revoked yet");

        let path = format!("/certificates/{id}/revoke");
        let problem = expect_problem(app.post(&path, ADMIN_TOKEN, json!({ "reason": "stolen" })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem["errors"][0]["field"], "reason");
        expect_problem(app.post(&path, ADMIN_TOKEN, json!({ "reason": "removeFromCRL" })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        let viewer = app.api_token(ADMIN_TOKEN, "viewer").await;
        expect_problem(app.post(&path, &viewer, json!({ "reason": "keyCompromise" })).await, StatusCode::FORBIDDEN).await;

        app.clock.advance(Duration::minutes(5));
        let record = expect_json(app.post(&path, ADMIN_TOKEN, json!({ "reason": "keyCompromise" })).await, StatusCode::OK).await;
        assert_eq!(record["status"], "revoked");
        assert_eq!(record["revocationReason"], "keyCompromise");
        assert!(record["revokedAt"].is_string());
        expect_problem(app.post(&path, ADMIN_TOKEN, json!({ "reason": "superseded" })).await, StatusCode::CONFLICT).await;
        expect_problem(app.request(Method::POST, &format!("/certificates/{id}/renew"), Some(ADMIN_TOKEN), None).await, StatusCode::CONFLICT).await;
        let revoked_events = events(&app, "certificate.revoked", 1).await;
        assert_eq!(revoked_events.len(), 1);
        assert_eq!(revoked_events[0]["data"]["reason"], "keyCompromise");

        // The CRL: re-signed at once, verified by webpki (signature, then the serial) and read by x509-parser.
        let crl = crl_der(&app).await;
        let at = now_seconds(&app) + 1;
        assert!(matches!(webpki_verify(&ca, &der(&s(&revoked["certificatePem"])), at, Some(&crl)), Err(webpki::Error::CertRevoked)));
        webpki_verify(&ca, &der(&s(&kept["certificatePem"])), at, Some(&crl)).expect("the other certificate is fine");
        let (_, parsed) = x509_parser::parse_x509_crl(&crl).expect("CRL");
        let entries: Vec<_> = parsed.iter_revoked_certificates().collect();
        assert_eq!(entries.len(), 1);
        let serial = hex::encode(entries[0].raw_serial().iter().skip_while(|b| **b == 0).copied().collect::<Vec<_>>());
        assert_eq!(serial, s(&revoked["certificate"]["serialNumber"]));
        assert_eq!(entries[0].reason_code().map(|(_, code)| code.0), Some(1), "keyCompromise");
        let before_number = x509_parser::parse_x509_crl(&before).unwrap().1.crl_number().cloned();
        assert!(parsed.crl_number().cloned() > before_number, "each CRL has a larger cRLNumber");
        let pem = app.request(Method::GET, "/ca/crl?format=pem", None, None).await;
        assert_eq!(pem.headers()["content-type"], "application/x-pem-file");
        assert!(pem.text().await.unwrap().contains("BEGIN X509 CRL"));
    }

    async fn deleting_a_device_revokes_its_certificates(app) {
        let (device_id, _) = device(&app, ADMIN_TOKEN, "Old").await;
        let first = issue(&app, ADMIN_TOKEN, &device_id, None).await;
        let ca = ca_der(&app).await;
        let response = app.delete(&format!("/devices/{device_id}"), ADMIN_TOKEN).await;
        assert!(response.status().is_success(), "{}", response.status());
        let id = s(&first["certificate"]["id"]);
        let record = expect_json(app.get(&format!("/certificates/{id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(record["status"], "revoked");
        assert_eq!(record["revocationReason"], "cessationOfOperation");
        let crl = crl_der(&app).await;
        assert!(matches!(
            webpki_verify(&ca, &der(&s(&first["certificatePem"])), now_seconds(&app) + 1, Some(&crl)),
            Err(webpki::Error::CertRevoked)
        ));
        let (_, parsed) = x509_parser::parse_x509_crl(&crl).unwrap();
        assert_eq!(parsed.iter_revoked_certificates().next().unwrap().reason_code().map(|(_, c)| c.0), Some(5));
    }

    async fn a_device_deleted_while_its_certificate_is_issued_gets_none(app) {
        let (device_id, _) = device(&app, ADMIN_TOKEN, "Doomed").await;
        // PostgreSQL: a delete that has run (row gone, certificates revoked) but not committed
        // yet, as another instance's would be: the issue below proves the device against
        // committed data and finds it. SQLite has one herd process with one writer, so no
        // delete can interleave there: the delete commits first and the issue must still 404.
        let mut delete = app.raw().await;
        delete.begin_write().await;
        assert_eq!(delete.execute("DELETE FROM devices WHERE id = $1", &[&device_id]).await, 1);
        delete
            .execute(
                "UPDATE certificates SET status = 'revoked', revocation_reason = 'cessationOfOperation' \
                 WHERE device_id = $1 AND status IN ('pending', 'active')",
                &[&device_id],
            )
            .await;
        if app.engine == Engine::Sqlite {
            delete.execute("COMMIT", &[]).await;
        }
        let (_, pem) = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        let request = app.client.post(app.url(&format!("/devices/{device_id}/certificates"))).bearer_auth(ADMIN_TOKEN).json(&json!({ "csr": pem })).send();
        let request = tokio::spawn(request);
        if app.engine == Engine::Postgres {
            // Let the issue get as far as it can while the delete is open: until it waits for
            // the device's row lock (or, without the lock, answers).
            let deadline = std::time::Instant::now() + StdDuration::from_secs(10);
            while !request.is_finished() && std::time::Instant::now() < deadline {
                let mut probe = app.raw().await;
                let waiting = probe
                    .scalar_i64("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'", &[])
                    .await;
                probe.close().await;
                if waiting > 0 {
                    break;
                }
                tokio::time::sleep(StdDuration::from_millis(20)).await;
            }
            delete.execute("COMMIT", &[]).await;
        }
        delete.close().await;
        let response = request.await.expect("task").expect("response");
        expect_problem(response, StatusCode::NOT_FOUND).await;
        let mut check = app.raw().await;
        let certificates = check.scalar_i64("SELECT count(*) FROM certificates WHERE device_id = $1", &[&device_id]).await;
        check.close().await;
        assert_eq!(certificates, 0, "no certificate for a deleted device");
    }

    async fn concurrent_issuances_each_get_their_own_answer(app) {
        // Issued at once, they share transactions (group commit): each answer is still its
        // own, a deleted device's issue fails alone, and every certificate has its event.
        let mut ids = Vec::new();
        for n in 0..24 {
            ids.push(device(&app, ADMIN_TOKEN, &format!("G{n}")).await.0);
        }
        let deleted: Vec<String> = ids.iter().step_by(6).cloned().collect();
        for id in &deleted {
            assert_eq!(app.delete(&format!("/devices/{id}"), ADMIN_TOKEN).await.status(), StatusCode::NO_CONTENT);
        }
        let (_, pem) = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        let paths: Vec<String> = ids.iter().map(|id| format!("/devices/{id}/certificates")).collect();
        let requests =
            paths.iter().map(|path| app.request(Method::POST, path, Some(ADMIN_TOKEN), Some(json!({ "csr": pem }))));
        let responses = futures::future::join_all(requests).await;
        let mut issued = std::collections::HashMap::new();
        for (id, response) in ids.iter().zip(responses) {
            if deleted.contains(id) {
                expect_problem(response, StatusCode::NOT_FOUND).await;
            } else {
                let body = expect_json(response, StatusCode::CREATED).await;
                assert_eq!(body["certificate"]["deviceId"], id.as_str());
                issued.insert(s(&body["certificate"]["id"]), id.clone());
            }
        }
        assert_eq!(issued.len(), ids.len() - deleted.len());
        let announced = events(&app, "certificate.issued", issued.len()).await;
        assert_eq!(announced.len(), issued.len());
        for event in &announced {
            let certificate = s(&event["data"]["certificateId"]);
            assert_eq!(issued.get(&certificate), Some(&s(&event["data"]["deviceId"])), "{event}");
        }
        let mut check = app.raw().await;
        let stored = check.scalar_i64("SELECT count(*) FROM certificates", &[]).await;
        check.close().await;
        assert_eq!(stored, issued.len() as i64);
    }

    async fn validation_reports_every_failed_check(app) {
        let (device_id, _) = device(&app, ADMIN_TOKEN, "V").await;
        let body = issue(&app, ADMIN_TOKEN, &device_id, None).await;
        let pem = s(&body["certificatePem"]);
        let fingerprint = s(&body["certificate"]["fingerprint"]);
        let viewer = app.api_token(ADMIN_TOKEN, "viewer").await;

        let ok = expect_json(app.post("/certificates/validate", &viewer, json!({ "certificatePem": pem })).await, StatusCode::OK).await;
        assert_eq!(ok["valid"], true, "{ok}");
        assert_eq!(ok["status"], "active");
        assert_eq!(ok["reasons"], json!([]));
        assert_eq!(ok["certificateId"], body["certificate"]["id"]);
        assert_eq!(ok["deviceId"], device_id.as_str());
        assert_eq!(ok["notAfter"], body["certificate"]["notAfter"]);
        let colons: String = fingerprint.as_bytes().chunks(2).map(|pair| String::from_utf8_lossy(pair).to_uppercase()).collect::<Vec<_>>().join(":");
        let by_fingerprint = expect_json(app.post("/certificates/validate", &viewer, json!({ "fingerprint": colons })).await, StatusCode::OK).await;
        assert_eq!(by_fingerprint["valid"], true, "{by_fingerprint}");

        // Revoked and expired: both reasons.
        let id = s(&body["certificate"]["id"]);
        expect_json(app.post(&format!("/certificates/{id}/revoke"), ADMIN_TOKEN, json!({ "reason": "superseded" })).await, StatusCode::OK).await;
        app.clock.advance(Duration::days(366));
        let bad = expect_json(app.post("/certificates/validate", &viewer, json!({ "certificatePem": pem })).await, StatusCode::OK).await;
        assert_eq!(bad["valid"], false);
        assert_eq!(bad["status"], "revoked");
        assert_eq!(bad["reasons"], json!(["expired", "revoked"]));

        // Not ours: signed by another CA and unknown.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let foreign = rcgen::CertificateParams::new(vec!["x".into()]).unwrap().self_signed(&key).unwrap().pem();
        let verdict = expect_json(app.post("/certificates/validate", &viewer, json!({ "certificatePem": foreign })).await, StatusCode::OK).await;
        assert_eq!(verdict["reasons"], json!(["notSignedByCa", "unknownCertificate"]));
        assert_eq!(verdict["status"], "unknown");
        assert_eq!(verdict["certificateId"], Value::Null);
        let malformed = expect_json(app.post("/certificates/validate", &viewer, json!({ "certificatePem": "junk" })).await, StatusCode::OK).await;
        assert_eq!(malformed["reasons"], json!(["malformed"]));
        let problem = expect_problem(app.post("/certificates/validate", &viewer, json!({})).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(problem["errors"][0]["field"], "certificatePem");
        expect_problem(app.post("/certificates/validate", &viewer, json!({ "fingerprint": "abc" })).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    }

    async fn the_monitor_warns_renews_and_expires_once_as_time_moves(app) {
        let (device_id, device_token) = device(&app, ADMIN_TOKEN, "Clock").await;
        let (other_device, other_token) = device(&app, ADMIN_TOKEN, "CSR").await;
        let server = issue(&app, ADMIN_TOKEN, &device_id, None).await;
        let (_, csr_pem) = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        let own = issue(&app, ADMIN_TOKEN, &other_device, Some(json!({ "csr": csr_pem }))).await;
        let (first, _db) = instance(&app).await;
        let (second, _db2) = instance(&app).await;
        let now = || to_millis(app.clock.now());

        let outcome = monitor::run_once(&first, &app.state.system, now()).await.unwrap();
        assert_eq!((outcome.warned, outcome.renewed, outcome.expired), (0, 0, 0));

        // 29 days left: inside the 30-day warning window. Two instances at once: one warning each.
        app.clock.advance(Duration::days(336));
        let (a, b) = tokio::join!(monitor::run_once(&first, &app.state.system, now()), monitor::run_once(&second, &app.state.system, now()));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.warned + b.warned, 2, "{a:?} {b:?}");
        assert_eq!(monitor::run_once(&first, &app.state.system, now()).await.unwrap().warned, 0, "warned once per certificate");
        assert_eq!(events(&app, "certificate.expiring", 2).await.len(), 2);

        // 6 days left: the server-key certificate is renewed (once, by either instance); the CSR one cannot be.
        app.clock.advance(Duration::days(23));
        let (a, b) = tokio::join!(monitor::run_once(&first, &app.state.system, now()), monitor::run_once(&second, &app.state.system, now()));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.renewed + b.renewed, 1, "{a:?} {b:?}");
        let old_id = s(&server["certificate"]["id"]);
        let old = expect_json(app.get(&format!("/certificates/{old_id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        let new_id = s(&old["replacedById"]);
        let renewed = events(&app, "certificate.renewed", 1).await;
        assert_eq!(renewed.len(), 1);
        assert_eq!(renewed[0]["data"]["replacedById"], new_id.as_str());
        assert_eq!(monitor::run_once(&first, &app.state.system, now()).await.unwrap().renewed, 0);

        // The device picks up its new certificate and key.
        let bundle = expect_json(app.get("/devices/self/certificate", &device_token).await, StatusCode::OK).await;
        assert_eq!(bundle["certificate"]["id"], new_id.as_str());
        let key = rcgen::KeyPair::from_pem(&s(&bundle["privateKeyPem"])).unwrap();
        let leaf = der(&s(&bundle["certificatePem"]));
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        assert_eq!(rcgen::PublicKeyData::subject_public_key_info(&key), cert.public_key().raw);
        webpki_verify(&ca_der(&app).await, &leaf, now_seconds(&app) + 1, None).expect("the successor verifies");

        // The CSR device renews itself with a new CSR.
        let (_, next_csr) = csr(&rcgen::PKCS_ECDSA_P384_SHA384);
        let mine = expect_json(app.post("/devices/self/certificates", &other_token, json!({ "csr": next_csr })).await, StatusCode::CREATED).await;
        let own_id = s(&own["certificate"]["id"]);
        let own_old = expect_json(app.get(&format!("/certificates/{own_id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(own_old["replacedById"], mine["certificate"]["id"]);
        let current = expect_json(app.get("/devices/self/certificate", &other_token).await, StatusCode::OK).await;
        assert_eq!(current["certificate"]["id"], mine["certificate"]["id"]);
        assert!(current.get("privateKeyPem").is_none());

        // Past notAfter: the two old certificates expire, once.
        app.clock.advance(Duration::days(7));
        let (a, b) = tokio::join!(monitor::run_once(&first, &app.state.system, now()), monitor::run_once(&second, &app.state.system, now()));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.expired + b.expired, 2, "{a:?} {b:?}");
        assert_eq!(events(&app, "certificate.expired", 2).await.len(), 2);
        let old = expect_json(app.get(&format!("/certificates/{old_id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(old["status"], "expired");
        let quiet = monitor::run_once(&first, &app.state.system, now()).await.unwrap();
        assert_eq!(MonitorOutcome { crl_published: quiet.crl_published, ..MonitorOutcome::default() }, quiet);
    }

    async fn another_tenants_certificates_answer_like_missing_ones(app) {
        let (device_id, _) = device(&app, ADMIN_TOKEN, "Mine").await;
        let body = issue(&app, ADMIN_TOKEN, &device_id, None).await;
        let id = s(&body["certificate"]["id"]);
        let (_, other) = app.create_tenant("other").await;
        let missing_device = uuid::Uuid::now_v7().to_string();
        let missing_cert = uuid::Uuid::now_v7().to_string();
        let (_, csr_pem) = csr(&rcgen::PKCS_ECDSA_P256_SHA256);

        let pairs: Vec<(Method, String, String, Option<Value>)> = vec![
            (Method::POST, format!("/devices/{device_id}/certificates"), format!("/devices/{missing_device}/certificates"), None),
            (Method::POST, format!("/devices/{device_id}/certificates"), format!("/devices/{missing_device}/certificates"), Some(json!({ "csr": csr_pem }))),
            (Method::GET, format!("/devices/{device_id}/certificates"), format!("/devices/{missing_device}/certificates"), None),
            (Method::GET, format!("/certificates/{id}"), format!("/certificates/{missing_cert}"), None),
            (Method::POST, format!("/certificates/{id}/revoke"), format!("/certificates/{missing_cert}/revoke"), Some(json!({ "reason": "keyCompromise" }))),
            (Method::POST, format!("/certificates/{id}/renew"), format!("/certificates/{missing_cert}/renew"), None),
        ];
        for (method, theirs, missing, body) in pairs {
            let a = expect_problem(app.request(method.clone(), &theirs, Some(&other), body.clone()).await, StatusCode::NOT_FOUND).await;
            let b = expect_problem(app.request(method.clone(), &missing, Some(&other), body).await, StatusCode::NOT_FOUND).await;
            assert_eq!(a, b, "{method} {theirs}");
        }
        for request in [json!({ "certificatePem": s(&body["certificatePem"]) }), json!({ "fingerprint": s(&body["certificate"]["fingerprint"]) })] {
            let verdict = expect_json(app.post("/certificates/validate", &other, request).await, StatusCode::OK).await;
            assert_eq!(verdict["valid"], false);
            assert_eq!(verdict["certificateId"], Value::Null);
            assert!(verdict["reasons"].as_array().unwrap().contains(&json!("unknownCertificate")));
        }
        let list = expect_json(app.get("/certificates", &other).await, StatusCode::OK).await;
        assert_eq!(list["items"], json!([]));
        // Untouched by all of that.
        let record = expect_json(app.get(&format!("/certificates/{id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(record["status"], "active");
        assert_eq!(record["replacedById"], Value::Null);
    }

    async fn the_inventory_filters_and_pages_by_expiry(app) {
        let (device_id, _) = device(&app, ADMIN_TOKEN, "Inv").await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            let body = issue(&app, ADMIN_TOKEN, &device_id, Some(json!({ "csr": csr(&rcgen::PKCS_ECDSA_P256_SHA256).1 }))).await;
            ids.push(s(&body["certificate"]["id"]));
            app.clock.advance(Duration::days(10));
        }
        let id0 = ids[0].clone();
        expect_json(app.post(&format!("/certificates/{id0}/revoke"), ADMIN_TOKEN, json!({ "reason": "superseded" })).await, StatusCode::OK).await;

        let page = expect_json(app.get("/certificates?limit=2", ADMIN_TOKEN).await, StatusCode::OK).await;
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.iter().map(|i| s(&i["id"])).collect::<Vec<_>>(), ids[..2].to_vec(), "soonest expiry first");
        let cursor = s(&page["nextCursor"]);
        let rest = expect_json(app.get(&format!("/certificates?limit=2&cursor={cursor}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(rest["items"][0]["id"], ids[2].as_str());
        assert_eq!(rest["nextCursor"], Value::Null);

        let revoked = expect_json(app.get("/certificates?status=revoked", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(revoked["items"].as_array().unwrap().len(), 1);
        // Now is day 30: they expire in 335 (revoked), 345 and 355 days.
        let soon = expect_json(app.get("/certificates?expiringWithinDays=350&status=active", ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(soon["items"].as_array().unwrap().len(), 1);
        assert_eq!(soon["items"][0]["id"], ids[1].as_str());
        let by_device = expect_json(app.get(&format!("/certificates?deviceId={device_id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(by_device["items"].as_array().unwrap().len(), 3);
        let problem = expect_problem(app.get("/certificates?status=lost&expiringWithinDays=-1", ADMIN_TOKEN).await, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert!(!problem["errors"].as_array().unwrap().is_empty());
        expect_problem(app.request(Method::GET, "/certificates", None, None).await, StatusCode::UNAUTHORIZED).await;
    }

    async fn admin_renewal_marks_the_old_record_replaced(app) {
        let (device_id, _) = device(&app, ADMIN_TOKEN, "R").await;
        let body = issue(&app, ADMIN_TOKEN, &device_id, None).await;
        let id = s(&body["certificate"]["id"]);
        let operator = app.api_token(ADMIN_TOKEN, "operator").await;
        expect_problem(app.request(Method::POST, &format!("/certificates/{id}/renew"), Some(&operator), None).await, StatusCode::FORBIDDEN).await;
        let renewed = expect_json(app.request(Method::POST, &format!("/certificates/{id}/renew"), Some(ADMIN_TOKEN), None).await, StatusCode::CREATED).await;
        assert_ne!(renewed["certificate"]["id"], body["certificate"]["id"]);
        assert_ne!(renewed["privateKeyPem"], body["privateKeyPem"], "a new key");
        let old = expect_json(app.get(&format!("/certificates/{id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(old["replacedById"], renewed["certificate"]["id"]);
        expect_problem(app.request(Method::POST, &format!("/certificates/{id}/renew"), Some(ADMIN_TOKEN), None).await, StatusCode::CONFLICT).await;
        // A CSR certificate needs a new CSR.
        let (_, pem) = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        let own = issue(&app, ADMIN_TOKEN, &device_id, Some(json!({ "csr": pem }))).await;
        let own_id = s(&own["certificate"]["id"]);
        expect_problem(app.request(Method::POST, &format!("/certificates/{own_id}/renew"), Some(ADMIN_TOKEN), None).await, StatusCode::CONFLICT).await;
        let (_, pem) = csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        expect_json(app.post(&format!("/certificates/{own_id}/renew"), ADMIN_TOKEN, json!({ "csr": pem })).await, StatusCode::CREATED).await;
    }

    async fn a_restart_keeps_the_ca_and_every_record(app) {
        let (device_id, device_token) = device(&app, ADMIN_TOKEN, "Persist").await;
        let body = issue(&app, ADMIN_TOKEN, &device_id, None).await;
        let ca_before = ca_der(&app).await;
        let app = app.restart().await;
        assert_eq!(ca_der(&app).await, ca_before, "the same CA after a restart");
        let id = s(&body["certificate"]["id"]);
        let record = expect_json(app.get(&format!("/certificates/{id}"), ADMIN_TOKEN).await, StatusCode::OK).await;
        assert_eq!(record, body["certificate"]);
        let bundle = expect_json(app.get("/devices/self/certificate", &device_token).await, StatusCode::OK).await;
        assert_eq!(bundle["privateKeyPem"], body["privateKeyPem"]);
        let crl = crl_der(&app).await;
        webpki_verify(&ca_before, &der(&s(&body["certificatePem"])), now_seconds(&app) + 1, Some(&crl)).expect("still valid");

        // A CA key that does not belong to the certificate: the server refuses to start.
        let key_path = app.data_dir().join("certificates/ca-key.pem");
        let original = std::fs::read_to_string(&key_path).unwrap();
        let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(&key_path, stranger.serialize_pem()).unwrap();
        let mut settings = app.settings.clone();
        settings.listen = "127.0.0.1:0".parse().unwrap();
        let error = herd::app::App::build_with_clock(settings.clone(), app.clock.clone()).await.err().expect("refused");
        let message = format!("{error:#}");
        assert!(message.contains("does not match the CA certificate"), "{message}");
        std::fs::write(&key_path, original).unwrap();
        // Without any CA files, a database that has certificates does not get a second CA.
        let dir = tempfile::tempdir().unwrap();
        let mut elsewhere = settings.clone();
        elsewhere.data_dir = dir.path().to_path_buf();
        let error = herd::app::App::build_with_clock(elsewhere, app.clock.clone()).await.err().expect("refused");
        assert!(format!("{error:#}").contains("has no CA"), "{error:#}");
    }

    async fn keys_stay_readable_when_the_store_is_switched_and_migrated(app) {
        let (device_id, device_token) = device(&app, ADMIN_TOKEN, "Switch").await;
        let body = issue(&app, ADMIN_TOKEN, &device_id, None).await;
        let key = s(&body["privateKeyPem"]);
        let original = app.settings.cert_store;
        let other = match original {
            CertStoreKind::File => CertStoreKind::Database,
            CertStoreKind::Database => CertStoreKind::File,
        };
        let mut app = app;
        app.settings.cert_store = other;
        let app = app.restart().await;
        let bundle = expect_json(app.get("/devices/self/certificate", &device_token).await, StatusCode::OK).await;
        assert_eq!(s(&bundle["privateKeyPem"]), key, "readable from the store it was written to");

        // `herd certificates migrate-store`: the key moves to the configured store.
        let (service, _db) = instance(&app).await;
        let outcome = service.migrate_store().await.unwrap();
        assert_eq!(outcome.moved, 1);
        let key_file = app.data_dir().join(format!("certificates/devices/private/{device_id}-key.pem"));
        if other == CertStoreKind::Database {
            std::fs::remove_file(&key_file).unwrap();
        } else {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // The key reaches the device once; reading it again here needs the delivery mark reset.
        let again = expect_json(app.get("/devices/self/certificate", &device_token).await, StatusCode::OK).await;
        assert!(again.get("privateKeyPem").is_none(), "delivered once: {again}");
        app.execute_sql("UPDATE certificates SET key_delivered_at = NULL").await;
        let bundle = expect_json(app.get("/devices/self/certificate", &device_token).await, StatusCode::OK).await;
        assert_eq!(s(&bundle["privateKeyPem"]), key, "readable from the store it was moved to");
        assert_eq!(service.migrate_store().await.unwrap().moved, 0, "nothing left to move");
    }
}

/// On-demand key generation runs in bounded turns (one per core) and gives each turn back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_keys_take_turns_and_give_them_back() {
    let pool = herd::certificates::keypool::KeyPool::new(2048, 0);
    let turns = pool.free_generation_turns();
    assert!(turns >= 1);
    let keys = futures::future::join_all((0..turns * 2 + 1).map(|_| pool.take())).await;
    assert!(keys.iter().all(Result::is_ok));
    assert_eq!(pool.free_generation_turns(), turns, "every turn is given back");
}

/// The key pool hands out distinct, valid keys and refills in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_pool_hands_out_distinct_keys() {
    let pool = herd::certificates::keypool::KeyPool::new(2048, 2);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        let key = pool.take().await.expect("key");
        assert!(seen.insert(key.public_key_der()), "a key is handed out once");
        assert_eq!(key.key_description(), "RSA 2048-bit");
    }
}
