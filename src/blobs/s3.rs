//! The blob store on S3-compatible object storage (AWS S3, MinIO, Ceph, Garage, moto), through
//! `object_store`: path-style requests, plain HTTP allowed only for an `http://` endpoint, and
//! every object under the configured bucket prefix.
//!
//! The hash, and so the key, is known only when the body has ended. A body that fits in one
//! part ([`PART_SIZE`]) is held in memory and put at its key in one request. A larger one is
//! uploaded in parts (at most [`PARTS_IN_FLIGHT`] at once, so memory stays near
//! `PART_SIZE × (PARTS_IN_FLIGHT + 1)` whatever the size) to `<bucket prefix>/.tmp/<uuid>`, then
//! copied server-side to its key (unless that content is already there) and the temporary
//! object deleted. A failing or over-long body aborts the multipart upload before the call
//! returns; a caller dropped halfway aborts it from a spawned task. Temporary objects that a
//! crash left behind are removed by the start-up check once they are an hour old (parts of a
//! multipart upload that a crash interrupted are S3's to expire: see the README).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::stream::{Stream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};
use sha2::{Digest, Sha256};

use super::{clamp_range, content_key, BlobBody, BlobError, StoredBlob};
use crate::config::S3Settings;

/// The size of each part of a multipart upload (S3 needs at least 5 MiB for all but the last;
/// 8 MiB parts reach S3's 10,000-part limit at 78 GiB).
pub(super) const PART_SIZE: usize = 8 * 1024 * 1024;

/// Parts of one upload sent at once; the body waits (back-pressure) beyond this.
const PARTS_IN_FLIGHT: usize = 4;

/// Temporary objects older than this were left by a crash and are removed at start.
const STALE_TEMP_AGE: chrono::Duration = chrono::Duration::hours(1);

pub(super) struct S3Store {
    store: Arc<AmazonS3>,
    /// The configured key prefix inside the bucket, without slashes at either end (may be empty).
    prefix: String,
    /// For messages: `bucket` at `endpoint`.
    description: String,
}

impl S3Store {
    pub(super) fn new(config: &S3Settings) -> anyhow::Result<Self> {
        // A 30 s whole-request timeout (object_store's default) would cut a long download of a
        // large blob; connecting still times out after 5 s, and failed requests are retried a
        // few times within 30 s rather than object_store's default of three minutes, so a wrong
        // endpoint fails the start quickly.
        let client = ClientOptions::new()
            .with_allow_http(config.endpoint.as_deref().is_some_and(|endpoint| endpoint.starts_with("http://")))
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(3600));
        let retry = RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(30), ..RetryConfig::default() };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(false)
            .with_client_options(client)
            .with_retry(retry);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder.with_access_key_id(id).with_secret_access_key(secret.expose());
        }
        let store = builder.build().with_context(|| format!("cannot configure the S3 bucket {}", config.bucket))?;
        let description = match &config.endpoint {
            Some(endpoint) => format!("bucket {} at {endpoint}", config.bucket),
            None => format!("bucket {} in {}", config.bucket, config.region),
        };
        Ok(Self {
            store: Arc::new(store),
            prefix: config.prefix.clone().unwrap_or_default().trim_matches('/').to_string(),
            description,
        })
    }

    /// Lists the temporary objects (one request when there are none): a wrong endpoint, a
    /// missing bucket or refused credentials fail here, with the store named. Those older than
    /// an hour at `now` are deleted.
    pub(super) async fn check(&self, now: DateTime<Utc>) -> anyhow::Result<()> {
        let temporary = self.path(".tmp")?;
        let mut listing = self.store.list(Some(&temporary));
        while let Some(object) = listing.next().await {
            let object = object.with_context(|| format!("cannot use the S3 {} (HERD_S3_*)", self.description))?;
            if now - object.last_modified > STALE_TEMP_AGE {
                tracing::info!(object = %object.location, "removing a stale temporary blob object");
                self.store
                    .delete(&object.location)
                    .await
                    .with_context(|| format!("cannot delete {} from the S3 {}", object.location, self.description))?;
            }
        }
        Ok(())
    }

    pub(super) async fn put_stream<S, E>(
        &self,
        prefix: &str,
        mut body: S,
        max_bytes: u64,
    ) -> Result<StoredBlob, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut first_part = BytesMut::new();
        let mut upload: Option<PendingUpload> = None;
        while let Some(chunk) = body.next().await {
            let failed = match chunk {
                Err(error) => Some(BlobError::Body(error.to_string())),
                Ok(chunk) => {
                    size = size.saturating_add(chunk.len() as u64);
                    if size > max_bytes {
                        Some(BlobError::TooLarge { limit: max_bytes })
                    } else {
                        hasher.update(&chunk);
                        match &mut upload {
                            Some(pending) => pending.write(chunk).await.err(),
                            None => {
                                first_part.extend_from_slice(&chunk);
                                if first_part.len() >= PART_SIZE {
                                    match self.start_upload(first_part.split().freeze()).await {
                                        Ok(pending) => {
                                            upload = Some(pending);
                                            None
                                        }
                                        Err(error) => Some(error),
                                    }
                                } else {
                                    None
                                }
                            }
                        }
                    }
                }
            };
            if let Some(error) = failed {
                if let Some(pending) = upload.take() {
                    pending.abort().await;
                }
                return Err(error);
            }
        }

        let sha256 = hex::encode(hasher.finalize());
        let key = content_key(prefix, &sha256);
        let location = self.path(&key)?;
        match upload {
            None => {
                self.store
                    .put(&location, PutPayload::from(first_part.freeze()))
                    .await
                    .with_context(|| format!("cannot store {key} in the S3 {}", self.description))?;
            }
            Some(pending) => {
                let temporary = pending.finish().await?;
                let moved = self.move_into_place(&temporary, &location).await;
                let removed = self.store.delete(&temporary).await;
                moved.with_context(|| format!("cannot store {key} in the S3 {}", self.description))?;
                if let Err(error) = removed {
                    // The blob is stored; the start-up check removes the temporary object later.
                    tracing::warn!(%error, object = %temporary, "cannot delete a temporary blob object");
                }
            }
        }
        Ok(StoredBlob { key, sha256, size })
    }

    pub(super) async fn size(&self, key: &str) -> Result<Option<u64>, BlobError> {
        match self.store.head(&self.path(key)?).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(self.failed(error, "cannot read", key)),
        }
    }

    pub(super) async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<BlobBody, BlobError> {
        let location = self.path(key)?;
        let options = match range {
            None => GetOptions::default(),
            Some(range) => {
                // S3 refuses an empty range and one past the end, where `get` answers an empty
                // body or `RangeNotSatisfiable`; the size, from a HEAD, tells which.
                let size = self.size(key).await?.ok_or(BlobError::NotFound)?;
                let range = clamp_range(Some(range), size)?;
                if range.is_empty() {
                    return Ok(BlobBody { size, stream: futures::stream::empty().boxed() });
                }
                GetOptions { range: Some(GetRange::Bounded(range)), ..GetOptions::default() }
            }
        };
        match self.store.get_opts(&location, options).await {
            Ok(result) => Ok(BlobBody {
                size: result.meta.size,
                stream: result.into_stream().map_err(std::io::Error::other).boxed(),
            }),
            Err(object_store::Error::NotFound { .. }) => Err(BlobError::NotFound),
            Err(error) => Err(self.failed(error, "cannot read", key)),
        }
    }

    pub(super) async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(self.failed(error, "cannot delete", key)),
        }
    }

    pub(super) async fn signed_url(&self, key: &str, expires_in: Duration) -> Result<String, BlobError> {
        let url = self
            .store
            .signed_url(axum::http::Method::GET, &self.path(key)?, expires_in)
            .await
            .map_err(|error| self.failed(error, "cannot sign a URL for", key))?;
        Ok(url.to_string())
    }

    /// Starts a multipart upload to a new temporary object with the body's first part.
    async fn start_upload(&self, first_part: Bytes) -> Result<PendingUpload, BlobError> {
        let temporary = self.path(&format!(".tmp/{}", uuid::Uuid::new_v4().simple()))?;
        let upload = self
            .store
            .put_multipart(&temporary)
            .await
            .with_context(|| format!("cannot start an upload to the S3 {}", self.description))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        writer.put(first_part);
        Ok(PendingUpload { writer: Some(writer), temporary })
    }

    /// Copies the complete temporary object to `location`, unless that content is there already.
    async fn move_into_place(&self, temporary: &Path, location: &Path) -> object_store::Result<()> {
        match self.store.head(location).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => self.store.copy(temporary, location).await,
            Err(error) => Err(error),
        }
    }

    /// The object path of a key (valid: `validate_key` passed) under the bucket prefix.
    fn path(&self, key: &str) -> Result<Path, BlobError> {
        let full = if self.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.prefix) };
        Path::parse(&full).map_err(|error| BlobError::Backend(anyhow::Error::new(error).context("invalid object path")))
    }

    fn failed(&self, error: object_store::Error, doing: &str, key: &str) -> BlobError {
        BlobError::Backend(anyhow::Error::new(error).context(format!("{doing} {key} in the S3 {}", self.description)))
    }
}

/// A multipart upload in progress. Dropped without [`PendingUpload::finish`] or
/// [`PendingUpload::abort`] (the caller's future was dropped), it aborts the upload from a
/// spawned task, so S3 does not keep the parts.
struct PendingUpload {
    writer: Option<WriteMultipart>,
    temporary: Path,
}

impl PendingUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        let Some(writer) = self.writer.as_mut() else { return Ok(()) };
        writer.wait_for_capacity(PARTS_IN_FLIGHT).await.context("cannot upload a part to S3")?;
        writer.put(chunk);
        Ok(())
    }

    /// Sends the last part and completes the upload: the temporary object then exists.
    async fn finish(mut self) -> Result<Path, BlobError> {
        let Some(writer) = self.writer.take() else {
            return Err(BlobError::Backend(anyhow::anyhow!("the upload was already ended")));
        };
        writer.finish().await.context("cannot complete an upload to S3")?;
        Ok(self.temporary.clone())
    }

    async fn abort(mut self) {
        if let Some(writer) = self.writer.take() {
            if let Err(error) = writer.abort().await {
                tracing::warn!(%error, object = %self.temporary, "cannot abort an S3 multipart upload");
            }
        }
    }
}

impl Drop for PendingUpload {
    fn drop(&mut self) {
        let Some(writer) = self.writer.take() else { return };
        let object = self.temporary.to_string();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = writer.abort().await {
                    tracing::warn!(%error, %object, "cannot abort an S3 multipart upload");
                }
            });
        }
    }
}
