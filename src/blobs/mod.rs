//! herd's blob store: one interface for the files that devices and operators upload and
//! download (remote-command screenshots now, OTA packages next), on local files or on
//! S3-compatible object storage.
//!
//! Blobs are content-addressed: a stored blob's key is `<prefix>/<sha256-hex>`, where the caller
//! chooses the prefix and the store computes the hash while the body streams in. Callers put a
//! tenant in the prefix (`t/<tenant-id>/screenshots`), so no blob is shared across tenants and a
//! tenant cannot probe another's content by hash. Memory stays flat whatever the size: bodies are
//! streamed to a temporary file (local) or uploaded in parts (S3), and reads are streams.
//!
//! This module owns the key rules ([`validate_key`]), the errors and the dispatch to the two
//! backends (`local`, `s3`); it knows nothing of HTTP routes, tenants or the database: the
//! callers (remote commands, packages) keep which key belongs to what.

mod local;
mod s3;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, Stream};

use crate::config::{BlobStoreSettings, S3Settings, Settings};

/// A blob that [`BlobStore::put_stream`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    /// `<prefix>/<sha256>`: what [`BlobStore::get`], [`BlobStore::size`] and
    /// [`BlobStore::delete`] take.
    pub key: String,
    /// The SHA-256 of the content, 64 lowercase hex characters.
    pub sha256: String,
    /// The content's length in bytes.
    pub size: u64,
}

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The body was longer than the caller's limit; nothing was stored.
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// No blob has this key.
    #[error("no such blob")]
    NotFound,
    /// The range asked of [`BlobStore::get`] starts after the blob's end (or after its own end).
    #[error("the range is not within the blob's {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    /// A key or prefix that breaks the key rules (a caller's bug, never a client's input).
    #[error("invalid blob key {0:?}")]
    InvalidKey(String),
    /// The client's body stream failed (a dropped connection, a body-limit error); nothing was
    /// stored.
    #[error("the request body failed: {0}")]
    Body(String),
    /// The disk or the object store failed.
    #[error(transparent)]
    Backend(#[from] anyhow::Error),
}

/// A blob's bytes as a stream: the whole blob or a range of it.
pub struct BlobBody {
    /// The size of the whole blob (not of the range), for `Content-Range` and `Content-Length`.
    pub size: u64,
    /// The requested bytes, in chunks of at most [`READ_CHUNK`] bytes from local files.
    pub stream: BoxStream<'static, std::io::Result<Bytes>>,
}

impl std::fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobBody").field("size", &self.size).finish_non_exhaustive()
    }
}

/// The largest chunk a local read yields.
pub const READ_CHUNK: usize = 64 * 1024;

/// The longest key (or prefix) accepted, in bytes: S3 allows 1024 for the whole key, and the
/// bucket prefix and the hash take part of it.
const MAX_KEY_LEN: usize = 768;

/// The blob store: cheap to clone (an `Arc` inside), shared through `AppState::blobs`.
#[derive(Clone)]
pub struct BlobStore {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Local(Arc<local::LocalStore>),
    S3(Arc<s3::S3Store>),
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore").field("backend", &self.backend_name()).finish_non_exhaustive()
    }
}

impl BlobStore {
    /// A store of files under `dir` (herd uses `<data-dir>/blobs`). Creates the directory (0700)
    /// and its `.tmp/`, and removes temporary files that a crash left there more than an hour ago.
    pub fn local(dir: PathBuf) -> anyhow::Result<Self> {
        let store = local::LocalStore::open(dir, crate::clock::Clock::now(&crate::clock::SystemClock))?;
        Ok(Self { backend: Backend::Local(Arc::new(store)) })
    }

    /// A store in an S3 bucket. Builds the client only: [`BlobStore::check`] proves that the
    /// endpoint, the bucket and the credentials work.
    pub fn s3(config: &S3Settings) -> anyhow::Result<Self> {
        Ok(Self { backend: Backend::S3(Arc::new(s3::S3Store::new(config)?)) })
    }

    /// The store that `HERD_BLOB_STORE` chooses (`file`: `<data-dir>/blobs`).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        match &settings.blob_store {
            BlobStoreSettings::File => Self::local(settings.data_dir.join("blobs")),
            BlobStoreSettings::S3(config) => Self::s3(config),
        }
    }

    /// One cheap request that fails with a clear message when the store cannot be used (for S3:
    /// a wrong endpoint, a missing bucket, refused credentials), made at start so that a
    /// misconfiguration stops herd instead of the first upload. For S3 it also removes
    /// temporary objects that an interrupted upload left more than an hour ago.
    pub async fn check(&self) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Local(_) => Ok(()),
            Backend::S3(store) => store.check(crate::clock::Clock::now(&crate::clock::SystemClock)).await,
        }
    }

    /// Streams `body` in, computing its SHA-256 as it goes, and stores it as
    /// `<prefix>/<sha256>`. A body longer than `max_bytes` is [`BlobError::TooLarge`] and a
    /// failing body is [`BlobError::Body`]; in both cases nothing is stored. Storing content
    /// that is already there keeps one copy.
    pub async fn put_stream<S, E>(&self, prefix: &str, body: S, max_bytes: u64) -> Result<StoredBlob, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        validate_key(prefix)?;
        match &self.backend {
            Backend::Local(store) => store.put_stream(prefix, body, max_bytes).await,
            Backend::S3(store) => store.put_stream(prefix, body, max_bytes).await,
        }
    }

    /// The size of the blob, or `None` when there is none.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, BlobError> {
        validate_key(key)?;
        match &self.backend {
            Backend::Local(store) => store.size(key).await,
            Backend::S3(store) => store.size(key).await,
        }
    }

    /// The blob's bytes in `range` (start inclusive, end exclusive; `None`: all of them) as a
    /// stream. An end past the blob's end is cut to it (as HTTP ranges are); a start past the
    /// end, or after the range's own end, is [`BlobError::RangeNotSatisfiable`]. An empty range
    /// within the blob is an empty stream.
    pub async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<BlobBody, BlobError> {
        validate_key(key)?;
        match &self.backend {
            Backend::Local(store) => store.get(key, range).await,
            Backend::S3(store) => store.get(key, range).await,
        }
    }

    /// Removes the blob. Removing one that is not there succeeds (as on S3).
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        validate_key(key)?;
        match &self.backend {
            Backend::Local(store) => store.delete(key).await,
            Backend::S3(store) => store.delete(key).await,
        }
    }

    /// A URL that fetches the blob with a plain GET, without a token, until `expires_in` has
    /// passed (an S3 presigned URL), for a CDN, a proxy or a device; `None` for local files,
    /// which herd serves itself. The URL does not check that the blob exists.
    pub async fn signed_url(&self, key: &str, expires_in: Duration) -> Result<Option<String>, BlobError> {
        validate_key(key)?;
        match &self.backend {
            Backend::Local(_) => Ok(None),
            Backend::S3(store) => store.signed_url(key, expires_in).await.map(Some),
        }
    }

    /// `"file"` or `"s3"`, for logs and metrics.
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Local(_) => "file",
            Backend::S3(_) => "s3",
        }
    }
}

/// Checks a key or a prefix: 1 to [`MAX_KEY_LEN`] bytes of `[A-Za-z0-9._/-]`, `/`-separated
/// segments that are neither empty nor start with `.` (so no `..`, no leading or trailing or
/// double `/`, and nothing can name the stores' own `.tmp` areas). A key that passes is a
/// relative path that stays inside the store's directory.
pub fn validate_key(key: &str) -> Result<(), BlobError> {
    let invalid = || BlobError::InvalidKey(key.chars().take(100).collect());
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.contains("..") {
        return Err(invalid());
    }
    if !key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-')) {
        return Err(invalid());
    }
    if key.split('/').any(|segment| segment.is_empty() || segment.starts_with('.')) {
        return Err(invalid());
    }
    Ok(())
}

/// The bytes of a blob of `size` that `range` asks for, under [`BlobStore::get`]'s rules.
fn clamp_range(range: Option<Range<u64>>, size: u64) -> Result<Range<u64>, BlobError> {
    match range {
        None => Ok(0..size),
        Some(range) if range.start > range.end || range.start > size => Err(BlobError::RangeNotSatisfiable { size }),
        Some(range) => Ok(range.start..range.end.min(size)),
    }
}

/// The key of content with this hash under `prefix`.
fn content_key(prefix: &str, sha256: &str) -> String {
    format!("{prefix}/{sha256}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_leave_the_store() {
        for good in ["t/0192/screenshots", "a", "t/x/screenshots/ab12", "a-b_c.d/e"] {
            assert!(validate_key(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/abs",
            "a/../b",
            "..",
            "a/..",
            "a..b",
            "a//b",
            "a/",
            ".tmp/x",
            "a/.hidden",
            "a b",
            "a\\b",
            "a%2f",
            "ä",
            "a\0b",
            &"x".repeat(MAX_KEY_LEN + 1),
        ] {
            assert!(matches!(validate_key(bad), Err(BlobError::InvalidKey(_))), "{bad:?}");
        }
    }

    #[test]
    fn ranges_are_cut_to_the_blob() {
        assert_eq!(clamp_range(None, 10).unwrap(), 0..10);
        assert_eq!(clamp_range(Some(2..5), 10).unwrap(), 2..5);
        assert_eq!(clamp_range(Some(2..50), 10).unwrap(), 2..10);
        assert_eq!(clamp_range(Some(10..10), 10).unwrap(), 10..10);
        assert!(matches!(clamp_range(Some(11..20), 10), Err(BlobError::RangeNotSatisfiable { size: 10 })));
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 5..2;
        assert!(matches!(clamp_range(Some(backwards), 10), Err(BlobError::RangeNotSatisfiable { .. })));
    }
}
