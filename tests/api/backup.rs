//! `herd backup` and `herd restore`, run as the real binary: a backup taken while the server
//! serves and writes, restored into a fresh data directory (and, with `HERD_TEST_DATABASE_URL`,
//! a fresh PostgreSQL database), brings back devices, tokens, certificates and their private
//! keys, and the CA still issues; and a set that was altered, is missing a file, or mixes
//! another installation's kek or CA key is refused with nothing changed.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use herd::clock::Clock;
use herd::config::{CertStoreKind, Settings};
use reqwest::{Method, StatusCode};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{json, Value};
use sha2::Digest;

use crate::helpers::{expect_json, spawn_app_with, Engine, SpawnOptions, TestApp, ADMIN_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_database_key_store_round_trip() {
    round_trip(Engine::Sqlite, CertStoreKind::Database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_key_store_round_trip() {
    round_trip(Engine::Sqlite, CertStoreKind::File).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_database_key_store_round_trip() {
    if !crate::helpers::postgres_variant_runs() {
        return;
    }
    round_trip(Engine::Postgres, CertStoreKind::Database).await;
}

/// What the source server had before the backup, to look for after the restore.
struct Before {
    devices: Vec<(String, String)>,
    operator_token: String,
    enrollment_token: String,
    /// The certificate whose server-generated key no one has downloaded yet.
    undelivered: (String, String),
    ca_pem: String,
}

async fn round_trip(engine: Engine, store: CertStoreKind) {
    let app = spawn(engine, store).await;
    let before = populate(&app).await;

    // The backup runs while devices keep reporting and new ones are registered.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn(keep_writing(app.client.clone(), app.url(""), before.devices.clone(), writing.clone()));
    tokio::time::sleep(StdDuration::from_millis(100)).await;
    let set = tempfile::tempdir().unwrap();
    let dir = set.path().join("backup");
    let output = herd(&app.settings, &["backup", dir.to_str().unwrap()]).await;
    writing.store(false, Ordering::SeqCst);
    let writes = writer.await.unwrap();
    assert_success(&output, "herd backup");
    assert!(writes > 0, "the server was written to during the backup");
    let stdout = String::from_utf8_lossy(&output.stdout);
    match engine {
        Engine::Sqlite => assert!(stdout.contains("SQLite snapshot (VACUUM INTO)"), "{stdout}"),
        Engine::Postgres => assert!(stdout.contains("pg_dump"), "{stdout}"),
    }
    let manifest: Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["herdVersion"], env!("CARGO_PKG_VERSION"));
    assert!(manifest["schemaVersion"].as_i64().unwrap() > 0, "{manifest}");
    let paths: Vec<&str> = manifest["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"certificates/ca-key.pem") && paths.contains(&"certificates/ca-cert.pem"), "{paths:?}");
    if store == CertStoreKind::Database {
        assert!(paths.contains(&"kek"), "{paths:?}");
        assert!(manifest["kekProbe"]["sealed"].is_string(), "{manifest}");
    } else {
        let key_file = format!("certificates/devices/private/{}-key.pem", before.undelivered.0);
        assert!(paths.contains(&key_file.as_str()), "{paths:?}");
    }
    // A backup refuses to write into a directory that holds something.
    let again = herd(&app.settings, &["backup", dir.to_str().unwrap()]).await;
    assert_refused(&again, "not empty");

    // Restoring over the running server's own data is refused without --force.
    let over = herd(&app.settings, &["restore", dir.to_str().unwrap()]).await;
    assert_refused(&over, "refusing to restore over existing data");

    // Restore into a fresh data directory (and database), and serve it.
    let target = Arc::new(tempfile::tempdir().unwrap());
    let mut settings = Settings::defaults_for(target.path().join("data"));
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.cert_store = store;
    settings.cert_key_pool_size = 0;
    let postgres = match engine {
        Engine::Sqlite => None,
        Engine::Postgres => {
            let database = crate::helpers::create_postgres_database().await;
            settings.database_url = database.url().into();
            Some(database)
        }
    };
    let output = herd(&settings, &["restore", dir.to_str().unwrap()]).await;
    assert_success(&output, "herd restore");
    let restored = crate::helpers::start(engine, settings, app.clock.clone(), target, postgres).await;
    check_restored(&restored, &before).await;
}

async fn spawn(engine: Engine, store: CertStoreKind) -> TestApp {
    spawn_app_with(
        engine,
        SpawnOptions {
            adjust: Box::new(move |settings: &mut Settings| {
                settings.cert_store = store;
                settings.cert_key_pool_size = 0;
            }),
            ..Default::default()
        },
    )
    .await
}

/// Devices, an API token, an enrollment token and certificates with server-generated keys.
async fn populate(app: &TestApp) -> Before {
    let mut devices = Vec::new();
    for name in ["Lobby", "Kitchen", "Garage"] {
        let body =
            expect_json(app.post("/devices", ADMIN_TOKEN, json!({ "name": name })).await, StatusCode::CREATED).await;
        devices.push((s(&body["device"]["id"]), s(&body["deviceToken"])));
    }
    let operator_token = app.api_token(ADMIN_TOKEN, "operator").await;
    let enrollment_token = app.enrollment_token(ADMIN_TOKEN, json!({ "name": "restored", "maxUses": 5 })).await;
    // One certificate's key reaches its device before the backup, the other's only after the
    // restore (the server hands a key out once).
    issue(app, &devices[0].0).await;
    let delivered = expect_json(app.get("/devices/self/certificate", &devices[0].1).await, StatusCode::OK).await;
    assert!(delivered["privateKeyPem"].is_string(), "{delivered}");
    issue(app, &devices[1].0).await;
    let ca_pem = app.request(Method::GET, "/ca/certificate", None, None).await.text().await.unwrap();
    Before { undelivered: devices[1].clone(), devices, operator_token, enrollment_token, ca_pem }
}

async fn check_restored(app: &TestApp, before: &Before) {
    // The devices are there, and every kind of token still authenticates.
    for (id, token) in &before.devices {
        let device =
            expect_json(app.get(&format!("/devices/{id}"), &before.operator_token).await, StatusCode::OK).await;
        assert_eq!(device["id"], id.as_str());
        expect_json(app.post("/devices/connect", token, json!({})).await, StatusCode::OK).await;
    }
    let (device, _) = app.register(&before.enrollment_token, json!({ "serialNumber": "AFTER-RESTORE-1" })).await;
    assert_eq!(device["serialNumber"], "AFTER-RESTORE-1");

    // The CA is the same, the stored key decrypts and belongs to its certificate, which
    // verifies against the restored CA.
    let ca_pem = app.request(Method::GET, "/ca/certificate", None, None).await.text().await.unwrap();
    assert_eq!(ca_pem, before.ca_pem, "the restored server serves the backed-up CA");
    let ca = der(&ca_pem);
    let bundle = expect_json(app.get("/devices/self/certificate", &before.undelivered.1).await, StatusCode::OK).await;
    let key = rcgen::KeyPair::from_pem(&s(&bundle["privateKeyPem"])).expect("the stored private key decrypts");
    let leaf = der(&s(&bundle["certificatePem"]));
    let (_, certificate) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert_eq!(rcgen::PublicKeyData::subject_public_key_info(&key), certificate.public_key().raw);
    let now = app.clock.now().timestamp() + 60;
    verify(&ca, &leaf, now).expect("a restored certificate verifies against the restored CA");

    // New issuance works and chains to the same CA.
    let issued = issue(app, &before.devices[2].0).await;
    verify(&ca, &der(&s(&issued["certificatePem"])), now).expect("a new certificate verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_or_incomplete_set_is_refused_and_nothing_changes() {
    let app = spawn(Engine::Sqlite, CertStoreKind::Database).await;
    populate(&app).await;
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("good");
    assert_success(&herd(&app.settings, &["backup", good.to_str().unwrap()]).await, "herd backup");

    // Each case alters a copy of the set; the restore target must stay untouched.
    let cases = vec![
        case("an altered database", "database/herd.db: its SHA-256 does not match", |set| {
            flip_last_byte(&set.join("database/herd.db"))
        }),
        case("a missing kek", "kek: missing", |set| std::fs::remove_file(set.join("kek")).unwrap()),
        case("a file added after the backup", "certificates/extra.pem: not in the manifest", |set| {
            std::fs::write(set.join("certificates/extra.pem"), "x").unwrap()
        }),
        case("no manifest", "has no manifest.json", |set| std::fs::remove_file(set.join("manifest.json")).unwrap()),
        case(
            "another installation's kek (manifest rewritten to match)",
            "the kek does not open the private keys sealed in the database",
            |set| {
                let other = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
                replace_and_rehash(set, "kek", other.as_bytes());
            },
        ),
        case("another CA's key (manifest rewritten to match)", "does not match the CA certificate", |set| {
            let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            replace_and_rehash(set, "certificates/ca-key.pem", other.serialize_pem().as_bytes());
        }),
        case("a schema newer than this herd", "newer than this herd knows", |set| {
            let path = set.join("manifest.json");
            let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            manifest["schemaVersion"] = json!(99_999);
            std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
        }),
    ];
    for (what, expected, alter) in cases {
        let set = work.path().join(uuid::Uuid::new_v4().simple().to_string());
        copy_dir(&good, &set);
        alter(&set);
        let target = work.path().join(format!("target-{}", uuid::Uuid::new_v4().simple()));
        let settings = Settings::defaults_for(&target);
        let output = herd(&settings, &["restore", set.to_str().unwrap()]).await;
        assert_refused(&output, expected);
        assert!(!target.exists(), "{what}: the refused restore created {}", target.display());
    }

    // The untouched set restores.
    let target = work.path().join("target-ok");
    assert_success(&herd(&Settings::defaults_for(&target), &["restore", good.to_str().unwrap()]).await, "herd restore");
    assert!(
        target.join("herd.db").is_file()
            && target.join("kek").is_file()
            && target.join("certificates/ca-key.pem").is_file()
    );
}

/// One refusal case: what it is, what the refusal must say, and how it alters a set.
type Case = (&'static str, &'static str, Box<dyn Fn(&Path)>);

fn case(what: &'static str, expected: &'static str, alter: impl Fn(&Path) + 'static) -> Case {
    (what, expected, Box::new(alter))
}

/// Heartbeats and new devices until told to stop; answers how many writes succeeded.
async fn keep_writing(
    client: reqwest::Client,
    base: String,
    devices: Vec<(String, String)>,
    writing: Arc<AtomicBool>,
) -> usize {
    let mut writes = 0;
    let mut n = 0;
    while writing.load(Ordering::SeqCst) {
        n += 1;
        let (_, token) = &devices[n % devices.len()];
        let connect = client.post(format!("{base}/devices/connect")).bearer_auth(token).json(&json!({})).send().await;
        let created = client
            .post(format!("{base}/devices"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "name": format!("During backup {n}") }))
            .send()
            .await;
        writes += [connect, created].iter().filter(|r| r.as_ref().is_ok_and(|r| r.status().is_success())).count();
    }
    writes
}

/// Runs the `herd` binary with the settings that name a data directory and database.
async fn herd(settings: &Settings, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_herd"));
    command
        .args(args)
        .env("HERD_DATA_DIR", &settings.data_dir)
        .env("HERD_DATABASE_URL", &*settings.database_url)
        .env(
            "HERD_CERT_STORE",
            match settings.cert_store {
                CertStoreKind::File => "file",
                CertStoreKind::Database => "database",
            },
        )
        .env("HERD_LOG_FORMAT", "json")
        .env_remove("HERD_CONFIG")
        .env_remove("HERD_KEY_ENCRYPTION_KEY")
        .env_remove("HERD_BLOB_STORE");
    tokio::task::spawn_blocking(move || command.output().expect("herd runs")).await.unwrap()
}

fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn assert_refused(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected a refusal ({expected}), but it succeeded: {stderr}");
    assert!(stderr.contains(expected), "expected {expected:?} in:\n{stderr}");
}

async fn issue(app: &TestApp, device_id: &str) -> Value {
    let path = format!("/devices/{device_id}/certificates");
    expect_json(app.request(Method::POST, &path, Some(ADMIN_TOKEN), None).await, StatusCode::CREATED).await
}

fn s(value: &Value) -> String {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}")).to_string()
}

fn der(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).expect("PEM").into_contents()
}

/// rustls-webpki, not herd: the leaf chains to the CA for TLS client authentication at `at`.
fn verify(ca: &[u8], leaf: &[u8], at: i64) -> Result<(), webpki::Error> {
    let ca = CertificateDer::from(ca);
    let anchor = webpki::anchor_from_trusted_cert(&ca)?;
    let leaf = CertificateDer::from(leaf);
    let end_entity = webpki::EndEntityCert::try_from(&leaf)?;
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::since_unix_epoch(StdDuration::from_secs(at as u64)),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map(|_| ())
}

fn flip_last_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// Replaces a file of the set and rewrites its manifest entry to match, as a set assembled
/// from two installations would look.
fn replace_and_rehash(set: &Path, relative: &str, bytes: &[u8]) {
    std::fs::write(set.join(relative), bytes).unwrap();
    let path = set.join("manifest.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let entry = manifest["files"].as_array_mut().unwrap().iter_mut().find(|f| f["path"] == relative).unwrap();
    entry["size"] = json!(bytes.len());
    entry["sha256"] = json!(hex::encode(sha2::Sha256::digest(bytes)));
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target: PathBuf = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
