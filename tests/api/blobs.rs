//! The blob store on S3: the checks the local backend's unit tests make (put, get, ranges,
//! size, delete, content stored once, a body over the limit or failing halfway storing nothing,
//! key rules), plus a multipart-sized upload, aborted uploads that S3 does not keep, presigned
//! URLs fetched with a plain client, the start-up check refusing a wrong bucket or endpoint, and
//! the app choosing its store from its settings.
//!
//! Each test starts its own moto server (`python3 -m moto.server`, `moto[server]` from PyPI;
//! `.ci/run` installs it) on a free loopback port and kills it when done. Without moto a local run
//! skips with a message; a CI run (`CI` set) fails.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::body::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use herd::app::App;
use herd::blobs::{BlobError, BlobStore};
use herd::config::{BlobStoreSettings, S3Settings, Settings};
use sha2::{Digest, Sha256};

use crate::helpers::{spawn_app, spawn_app_with, Engine, SpawnOptions};

const BUCKET: &str = "herd-blobs";
const MIB: usize = 1024 * 1024;

/// A moto server on 127.0.0.1, killed when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts moto and creates [`BUCKET`]; `None` (after saying so) when moto is not installed
    /// and this is not CI.
    async fn start() -> Option<Moto> {
        let importable = Command::new("python3")
            .args(["-c", "import moto.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !importable {
            if std::env::var("CI").map(|v| !v.is_empty()).unwrap_or(false) {
                panic!(
                    "CI is set but `python3 -c 'import moto.server'` fails: the S3 blob tests must run in CI \
                     (python3 -m pip install 'moto[server]')"
                );
            }
            eprintln!("moto is not installed (python3 -m pip install 'moto[server]'): S3 blob tests skipped");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start python3 -m moto.server");
        let mut moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if client.get(&moto.endpoint).send().await.is_ok() {
                break;
            }
            if let Some(status) = moto.child.try_wait().unwrap() {
                panic!("moto exited before it answered: {status}");
            }
            assert!(tokio::time::Instant::now() < deadline, "moto did not answer on {} within 60 s", moto.endpoint);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // object_store cannot create buckets; moto takes an unsigned PUT.
        let created = client.put(format!("{}/{BUCKET}", moto.endpoint)).send().await.unwrap();
        assert!(created.status().is_success(), "cannot create the bucket: {}", created.status());
        Some(moto)
    }

    fn settings(&self, bucket: &str) -> S3Settings {
        S3Settings {
            bucket: bucket.into(),
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".into(),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            prefix: Some("herd-test".into()),
        }
    }

    async fn store(&self) -> BlobStore {
        let store = BlobStore::s3(&self.settings(BUCKET)).unwrap();
        store.check().await.unwrap();
        store
    }

    /// The keys of every object in the bucket (moto lists without a signature).
    async fn object_keys(&self) -> Vec<String> {
        let url = format!("{}/{BUCKET}?list-type=2", self.endpoint);
        tags(&reqwest::get(url).await.unwrap().text().await.unwrap(), "Key")
    }

    /// The ids of the multipart uploads S3 still keeps (started, neither completed nor aborted).
    async fn open_uploads(&self) -> Vec<String> {
        let url = format!("{}/{BUCKET}?uploads", self.endpoint);
        tags(&reqwest::get(url).await.unwrap().text().await.unwrap(), "UploadId")
    }
}

/// The texts of `<name>…</name>` in an XML answer.
fn tags(xml: &str, name: &str) -> Vec<String> {
    let (open, close) = (format!("<{name}>"), format!("</{name}>"));
    xml.split(&open).skip(1).filter_map(|rest| rest.split_once(&close).map(|(text, _)| text.to_string())).collect()
}

fn chunks(parts: Vec<Result<Vec<u8>, &'static str>>) -> impl Stream<Item = Result<Bytes, String>> + Send + Unpin {
    futures::stream::iter(parts.into_iter().map(|part| part.map(Bytes::from).map_err(String::from)))
}

/// `len` pseudo-random bytes (xorshift from `seed`), the same every time.
fn generated(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// `content` as a stream of 64 KiB chunks, produced as it is read (like a request body), with
/// `error_after` bytes followed by a failure if given.
fn streamed(content: Vec<u8>, error_after: Option<usize>) -> impl Stream<Item = Result<Bytes, String>> + Send + Unpin {
    let content = Bytes::from(content);
    let end = error_after.unwrap_or(content.len());
    Box::pin(futures::stream::unfold(Some(0usize), move |offset| {
        let content = content.clone();
        async move {
            let offset = offset?;
            if offset >= end {
                return error_after.map(|_| (Err("the client went away".to_string()), None));
            }
            let next = (offset + 64 * 1024).min(end);
            Some((Ok(content.slice(offset..next)), Some(next)))
        }
    }))
}

async fn read_all(store: &BlobStore, key: &str, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let body = store.get(key, range).await.unwrap();
    let parts: Vec<Bytes> = body.stream.try_collect().await.unwrap();
    parts.concat()
}

#[tokio::test]
async fn s3_put_get_range_size_delete_and_signed_urls() {
    let Some(moto) = Moto::start().await else { return };
    let store = moto.store().await;
    assert_eq!(store.backend_name(), "s3");

    let content = generated(1, 200_000);
    let parts = content.chunks(7_000).map(|c| Ok(c.to_vec())).collect();
    let stored = store.put_stream("t/tenant-a/screenshots", chunks(parts), 1 << 20).await.unwrap();
    assert_eq!(stored.sha256, hex::encode(Sha256::digest(&content)));
    assert_eq!(stored.key, format!("t/tenant-a/screenshots/{}", stored.sha256));
    assert_eq!(stored.size, content.len() as u64);
    assert_eq!(moto.object_keys().await, vec![format!("herd-test/{}", stored.key)], "under the bucket prefix");

    assert_eq!(store.size(&stored.key).await.unwrap(), Some(content.len() as u64));
    assert_eq!(read_all(&store, &stored.key, None).await, content);
    assert_eq!(read_all(&store, &stored.key, Some(1_000..150_001)).await, &content[1_000..150_001]);
    assert_eq!(read_all(&store, &stored.key, Some(199_990..300_000)).await, &content[199_990..]);
    assert!(read_all(&store, &stored.key, Some(5..5)).await.is_empty());
    assert_eq!(store.get(&stored.key, Some(0..1)).await.unwrap().size, content.len() as u64);
    assert!(matches!(
        store.get(&stored.key, Some(200_001..200_002)).await,
        Err(BlobError::RangeNotSatisfiable { size: 200_000 })
    ));

    // A presigned URL needs no credentials: a plain client fetches the bytes.
    let url = store.signed_url(&stored.key, Duration::from_secs(300)).await.unwrap().expect("S3 signs URLs");
    assert!(url.starts_with(&moto.endpoint) && url.contains("X-Amz-Signature="), "{url}");
    let fetched = reqwest::get(&url).await.unwrap();
    assert!(fetched.status().is_success(), "{}", fetched.status());
    assert_eq!(fetched.bytes().await.unwrap(), content);

    // Same content twice: one object. Another prefix (tenant): its own object.
    let again = store.put_stream("t/tenant-a/screenshots", chunks(vec![Ok(content.clone())]), 1 << 20).await.unwrap();
    assert_eq!(again, stored);
    assert_eq!(moto.object_keys().await.len(), 1);
    let other = store.put_stream("t/tenant-b/screenshots", chunks(vec![Ok(content.clone())]), 1 << 20).await.unwrap();
    assert_ne!(other.key, stored.key);

    store.delete(&stored.key).await.unwrap();
    store.delete(&other.key).await.unwrap();
    assert_eq!(store.size(&stored.key).await.unwrap(), None);
    assert!(matches!(store.get(&stored.key, None).await, Err(BlobError::NotFound)));
    assert!(matches!(store.get(&stored.key, Some(0..10)).await, Err(BlobError::NotFound)));
    store.delete(&stored.key).await.unwrap();
    assert_eq!(moto.object_keys().await, Vec::<String>::new());

    for key in ["../secret", "/etc/passwd", "a/../../secret", ".tmp/x", ""] {
        assert!(matches!(store.get(key, None).await, Err(BlobError::InvalidKey(_))), "{key}");
        assert!(matches!(store.size(key).await, Err(BlobError::InvalidKey(_))), "{key}");
        assert!(matches!(store.delete(key).await, Err(BlobError::InvalidKey(_))), "{key}");
        assert!(matches!(store.signed_url(key, Duration::from_secs(1)).await, Err(BlobError::InvalidKey(_))), "{key}");
        let put = store.put_stream(key, chunks(vec![Ok(b"x".to_vec())]), 10).await;
        assert!(matches!(put, Err(BlobError::InvalidKey(_))), "{key}");
    }
}

#[tokio::test]
async fn s3_multipart_uploads_store_large_blobs_and_abort_on_failure() {
    let Some(moto) = Moto::start().await else { return };
    let store = moto.store().await;
    let size = 20 * MIB;
    let content = generated(7, size);

    // Over the limit, once parts are already uploading: nothing stored, the upload aborted.
    let over = store.put_stream("t/a/packages", streamed(content.clone(), None), 12 * MIB as u64).await;
    assert!(matches!(over, Err(BlobError::TooLarge { limit }) if limit == 12 * MIB as u64), "{over:?}");
    assert_eq!(moto.open_uploads().await, Vec::<String>::new());
    assert_eq!(moto.object_keys().await, Vec::<String>::new());

    // The client's body fails after 17 MiB: the same.
    let failed = store.put_stream("t/a/packages", streamed(content.clone(), Some(17 * MIB)), u64::MAX).await;
    assert!(matches!(&failed, Err(BlobError::Body(message)) if message.contains("went away")), "{failed:?}");
    assert_eq!(moto.open_uploads().await, Vec::<String>::new());
    assert_eq!(moto.object_keys().await, Vec::<String>::new());

    // The caller is dropped halfway (its request went away): the upload is aborted all the same.
    let (sender, receiver) = futures::channel::mpsc::unbounded::<Result<Bytes, String>>();
    for part in content[..10 * MIB].chunks(MIB) {
        sender.unbounded_send(Ok(Bytes::copy_from_slice(part))).unwrap();
    }
    let put = store.put_stream("t/a/packages", receiver, u64::MAX);
    assert!(tokio::time::timeout(Duration::from_secs(3), put).await.is_err(), "the body never ended");
    drop(sender);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !moto.open_uploads().await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the dropped upload was not aborted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 20 MiB in 64 KiB chunks: three parts, then a server-side copy to the content's key.
    let stored = store.put_stream("t/a/packages", streamed(content.clone(), None), 2 << 30).await.unwrap();
    assert_eq!(stored.sha256, hex::encode(Sha256::digest(&content)));
    assert_eq!(stored.size, size as u64);
    assert_eq!(moto.object_keys().await, vec![format!("herd-test/{}", stored.key)], "no temporary object is left");
    assert_eq!(moto.open_uploads().await, Vec::<String>::new());
    assert_eq!(store.size(&stored.key).await.unwrap(), Some(size as u64));

    // A range across the first part boundary, one at the end, and the whole blob by its hash.
    let boundary = (8 * MIB) as u64;
    let across = boundary - 1_000..boundary + 3_000;
    assert_eq!(
        read_all(&store, &stored.key, Some(across.clone())).await,
        &content[across.start as usize..across.end as usize]
    );
    let tail = size as u64 - 10..size as u64 + 10;
    assert_eq!(read_all(&store, &stored.key, Some(tail)).await, &content[size - 10..]);
    let body = store.get(&stored.key, None).await.unwrap();
    assert_eq!(body.size, size as u64);
    let mut hasher = Sha256::new();
    let mut stream = body.stream;
    while let Some(chunk) = stream.next().await {
        hasher.update(chunk.unwrap());
    }
    assert_eq!(hex::encode(hasher.finalize()), stored.sha256);

    // The same large content again keeps one object and leaves no temporary one.
    let again = store.put_stream("t/a/packages", streamed(content, None), 2 << 30).await.unwrap();
    assert_eq!(again, stored);
    assert_eq!(moto.object_keys().await, vec![format!("herd-test/{}", stored.key)]);
}

#[tokio::test]
async fn the_start_up_check_refuses_a_missing_bucket_or_an_unreachable_endpoint() {
    let Some(moto) = Moto::start().await else { return };
    let missing = BlobStore::s3(&moto.settings("no-such-bucket")).unwrap();
    let error = format!("{:#}", missing.check().await.unwrap_err());
    assert!(error.contains("no-such-bucket") && error.contains(&moto.endpoint), "{error}");

    // Nothing listens on this port (it was free a moment ago).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let closed = S3Settings { endpoint: Some(format!("http://127.0.0.1:{port}")), ..moto.settings(BUCKET) };
    let started = std::time::Instant::now();
    let error = format!("{:#}", BlobStore::s3(&closed).unwrap().check().await.unwrap_err());
    assert!(error.contains(BUCKET) && error.contains(&format!("127.0.0.1:{port}")), "{error}");
    assert!(started.elapsed() < Duration::from_secs(45), "a wrong endpoint fails the start quickly");
}

#[tokio::test]
async fn the_app_keeps_blobs_where_its_settings_say() {
    let app = spawn_app(Engine::Sqlite).await;
    assert_eq!(app.state.blobs.backend_name(), "file");
    let stored = app.state.blobs.put_stream("t/x/screenshots", chunks(vec![Ok(b"png".to_vec())]), 10).await.unwrap();
    let file = app.settings.data_dir.join("blobs").join(&stored.key);
    assert_eq!(std::fs::read(file).unwrap(), b"png");

    let Some(moto) = Moto::start().await else { return };
    let s3 = moto.settings(BUCKET);
    let options = SpawnOptions {
        adjust: Box::new(move |settings| settings.blob_store = BlobStoreSettings::S3(s3)),
        ..Default::default()
    };
    let app = spawn_app_with(Engine::Sqlite, options).await;
    assert_eq!(app.state.blobs.backend_name(), "s3");
    let stored = app.state.blobs.put_stream("t/x/screenshots", chunks(vec![Ok(b"png".to_vec())]), 10).await.unwrap();
    assert_eq!(moto.object_keys().await, vec![format!("herd-test/{}", stored.key)]);

    // A bucket that is not there stops the start, with the reason.
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::defaults_for(data_dir.path());
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.cert_key_pool_size = 0;
    settings.blob_store = BlobStoreSettings::S3(moto.settings("no-such-bucket"));
    let error = format!("{:#}", App::build(settings).await.err().expect("the start fails"));
    assert!(error.contains("blob store") && error.contains("no-such-bucket"), "{error}");
}
