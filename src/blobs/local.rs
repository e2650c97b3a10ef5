//! The blob store on local files: `<dir>/<prefix>/<sha256>` (herd uses `<data-dir>/blobs`).
//!
//! A body is written to a new file in `<dir>/.tmp/` (0600) while it is hashed, fsynced, and
//! only then renamed to its content's key (directories 0700, through `files::create_private_dir`).
//! So a blob's file is complete or absent: a crash, a failing body, a body over the limit or a
//! request dropped halfway leaves at most a temporary file, which the drop guard removes at
//! once or the next start removes once it is an hour old. (`files::write_atomically` takes the
//! whole content as a slice, so it does not fit a streamed body; this follows the same steps.)
//! Reads are streams of at most `READ_CHUNK` bytes, so memory stays flat whatever the size.

use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::stream::{Stream, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{clamp_range, content_key, BlobBody, BlobError, StoredBlob, READ_CHUNK};
use crate::files::create_private_dir;

/// Temporary files older than this at start are left over from a crash: the previous process,
/// whose uploads they were, is gone.
const STALE_TEMP_AGE: chrono::Duration = chrono::Duration::hours(1);

pub(super) struct LocalStore {
    /// The root: blobs live under it by key.
    dir: PathBuf,
    /// `<dir>/.tmp`: bodies being written. Keys cannot name it (no segment starts with `.`).
    tmp: PathBuf,
}

impl LocalStore {
    /// Creates `dir` and `dir/.tmp` (0700) and removes temporary files older than an hour at `now`.
    pub(super) fn open(dir: PathBuf, now: DateTime<Utc>) -> anyhow::Result<Self> {
        create_private_dir(&dir).with_context(|| format!("cannot create the blob directory {}", dir.display()))?;
        let tmp = dir.join(".tmp");
        create_private_dir(&tmp)?;
        remove_stale_temp_files(&tmp, now)?;
        Ok(Self { dir, tmp })
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
        let temp = TempFile(Some(self.tmp.join(format!("{}.part", uuid::Uuid::new_v4().simple()))));
        let temp_path = temp.path().to_path_buf();
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file =
            options.open(&temp_path).await.with_context(|| format!("cannot create {}", temp_path.display()))?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|error| BlobError::Body(error.to_string()))?;
            size = size.saturating_add(chunk.len() as u64);
            if size > max_bytes {
                return Err(BlobError::TooLarge { limit: max_bytes });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.with_context(|| format!("cannot write {}", temp_path.display()))?;
        }
        file.flush().await.context("cannot write a blob")?;
        file.sync_all().await.with_context(|| format!("cannot sync {}", temp_path.display()))?;
        drop(file);

        let sha256 = hex::encode(hasher.finalize());
        let key = content_key(prefix, &sha256);
        let final_path = self.dir.join(&key);
        tokio::task::spawn_blocking(move || move_into_place(temp, &final_path))
            .await
            .context("the blob's rename task failed")??;
        Ok(StoredBlob { key, sha256, size })
    }

    pub(super) async fn size(&self, key: &str) -> Result<Option<u64>, BlobError> {
        match tokio::fs::metadata(self.dir.join(key)).await {
            Ok(metadata) if metadata.is_file() => Ok(Some(metadata.len())),
            Ok(_) => Ok(None),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(anyhow::Error::new(error).context(format!("cannot read the blob {key}")).into()),
        }
    }

    pub(super) async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<BlobBody, BlobError> {
        let path = self.dir.join(key);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(BlobError::NotFound),
            Err(error) => return Err(anyhow::Error::new(error).context(format!("cannot open the blob {key}")).into()),
        };
        let metadata = file.metadata().await.with_context(|| format!("cannot read the blob {key}"))?;
        if !metadata.is_file() {
            return Err(BlobError::NotFound);
        }
        let size = metadata.len();
        let range = clamp_range(range, size)?;
        file.seek(SeekFrom::Start(range.start)).await.with_context(|| format!("cannot read the blob {key}"))?;
        let stream = futures::stream::try_unfold((file, range.end - range.start), |(mut file, remaining)| async move {
            if remaining == 0 {
                return Ok(None);
            }
            let mut buffer = BytesMut::zeroed(remaining.min(READ_CHUNK as u64) as usize);
            let read = file.read(&mut buffer).await?;
            if read == 0 {
                // The file was cut while it was read: it is never rewritten in place, so this
                // is a disk problem, and the client must not take a short body for the blob.
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the blob ended early"));
            }
            buffer.truncate(read);
            Ok(Some((buffer.freeze(), (file, remaining - read as u64))))
        });
        Ok(BlobBody { size, stream: stream.into_stream().boxed() })
    }

    pub(super) async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.dir.join(key);
        match tokio::fs::symlink_metadata(&path).await {
            Ok(metadata) if metadata.is_file() => {}
            Ok(_) => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => {
                return Err(anyhow::Error::new(error).context(format!("cannot delete the blob {key}")).into())
            }
        }
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(anyhow::Error::new(error).context(format!("cannot delete the blob {key}")).into()),
        }
    }
}

/// Renames the complete temporary file to `final_path`, or drops it when the same content is
/// already there. Blocking: run on the blocking pool.
fn move_into_place(temp: TempFile, final_path: &Path) -> anyhow::Result<()> {
    let parent = final_path.parent().context("a blob path has a parent")?;
    create_private_dir(parent)?;
    if final_path.is_file() {
        // Content-addressed: the file there has these very bytes. The guard removes ours.
        return Ok(());
    }
    std::fs::rename(temp.path(), final_path)
        .with_context(|| format!("cannot move a blob to {}", final_path.display()))?;
    temp.disarm();
    // The rename is durable once the directory is: a crash after the answer keeps the blob.
    std::fs::File::open(parent)
        .and_then(|dir| dir.sync_all())
        .with_context(|| format!("cannot sync {}", parent.display()))
}

/// Removes the temporary files in `tmp` last modified more than [`STALE_TEMP_AGE`] before `now`:
/// what a crash or a kill left behind (a running upload writes to its file, so it is younger).
pub(super) fn remove_stale_temp_files(tmp: &Path, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(tmp).with_context(|| format!("cannot read {}", tmp.display()))? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        if !metadata.is_file() {
            continue;
        }
        let modified: DateTime<Utc> = metadata.modified()?.into();
        if now - modified > STALE_TEMP_AGE {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(error).with_context(|| format!("cannot remove {}", entry.path().display()));
                }
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, directory = %tmp.display(), "removed stale temporary blob files");
    }
    Ok(removed)
}

/// A temporary file that is removed when this is dropped, unless it was moved into place: an
/// error, a body over the limit, or the caller's future dropped halfway leaves no file behind.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::BlobStore;
    use super::*;

    fn chunks(parts: Vec<Result<Vec<u8>, &'static str>>) -> impl Stream<Item = Result<Bytes, String>> + Send + Unpin {
        futures::stream::iter(parts.into_iter().map(|part| part.map(Bytes::from).map_err(String::from)))
    }

    async fn read_all(store: &BlobStore, key: &str, range: Option<Range<u64>>) -> Vec<u8> {
        let body = store.get(key, range).await.unwrap();
        let parts: Vec<Bytes> = body.stream.try_collect().await.unwrap();
        assert!(parts.iter().all(|part| part.len() <= READ_CHUNK && !part.is_empty()));
        parts.concat()
    }

    /// Every file under `dir`, `.tmp` included.
    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    found.push(path);
                }
            }
        }
        found
    }

    #[tokio::test]
    async fn put_get_range_size_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path().join("blobs")).unwrap();
        assert_eq!(store.backend_name(), "file");
        let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let parts = content.chunks(7_000).map(|c| Ok(c.to_vec())).collect();
        let stored = store.put_stream("t/tenant-a/screenshots", chunks(parts), 1 << 20).await.unwrap();
        assert_eq!(stored.sha256, hex::encode(Sha256::digest(&content)));
        assert_eq!(stored.key, format!("t/tenant-a/screenshots/{}", stored.sha256));
        assert_eq!(stored.size, content.len() as u64);

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
        assert_eq!(store.signed_url(&stored.key, std::time::Duration::from_secs(60)).await.unwrap(), None);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let file = dir.path().join("blobs").join(&stored.key);
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
            let parent = file.parent().unwrap();
            assert_eq!(std::fs::metadata(parent).unwrap().permissions().mode() & 0o777, 0o700);
        }

        store.delete(&stored.key).await.unwrap();
        assert_eq!(store.size(&stored.key).await.unwrap(), None);
        assert!(matches!(store.get(&stored.key, None).await, Err(BlobError::NotFound)));
        store.delete(&stored.key).await.unwrap();
        // A prefix is a directory, not a blob.
        assert_eq!(store.size("t/tenant-a").await.unwrap(), None);
        assert!(matches!(store.get("t/tenant-a", None).await, Err(BlobError::NotFound)));
    }

    #[tokio::test]
    async fn same_content_twice_is_one_file_and_an_empty_body_is_a_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path().to_path_buf()).unwrap();
        let first =
            store.put_stream("p", chunks(vec![Ok(b"hello ".to_vec()), Ok(b"world".to_vec())]), 100).await.unwrap();
        let second = store.put_stream("p", chunks(vec![Ok(b"hello world".to_vec())]), 100).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(files_under(dir.path()), vec![dir.path().join(&first.key)]);
        let other_tenant = store.put_stream("q", chunks(vec![Ok(b"hello world".to_vec())]), 100).await.unwrap();
        assert_ne!(other_tenant.key, first.key, "prefixes never share a blob");

        let empty = store.put_stream("p", chunks(vec![]), 100).await.unwrap();
        assert_eq!(empty.size, 0);
        assert_eq!(empty.sha256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert!(read_all(&store, &empty.key, None).await.is_empty());
    }

    #[tokio::test]
    async fn a_body_over_the_limit_or_failing_halfway_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path().to_path_buf()).unwrap();
        let exactly = store.put_stream("p", chunks(vec![Ok(vec![1; 60]), Ok(vec![2; 40])]), 100).await.unwrap();
        store.delete(&exactly.key).await.unwrap();

        let over = store.put_stream("p", chunks(vec![Ok(vec![1; 60]), Ok(vec![2; 41])]), 100).await;
        assert!(matches!(over, Err(BlobError::TooLarge { limit: 100 })), "{over:?}");
        let failing =
            store.put_stream("p", chunks(vec![Ok(vec![1; 60]), Err("connection reset"), Ok(vec![2])]), 100).await;
        assert!(matches!(&failing, Err(BlobError::Body(message)) if message == "connection reset"), "{failing:?}");
        assert_eq!(files_under(dir.path()), Vec::<PathBuf>::new());

        // A caller whose request is dropped halfway (its future is never polled again).
        let (sender, receiver) = futures::channel::mpsc::unbounded::<Result<Bytes, String>>();
        sender.unbounded_send(Ok(Bytes::from(vec![3; 10]))).unwrap();
        let put = store.put_stream("p", receiver, 100);
        let dropped = tokio::time::timeout(std::time::Duration::from_millis(200), put).await;
        assert!(dropped.is_err(), "the body never ended, so the put cannot have");
        assert_eq!(files_under(dir.path()), Vec::<PathBuf>::new());
        drop(sender);
    }

    #[tokio::test]
    async fn invalid_keys_and_prefixes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("secret"), "outside").unwrap();
        for key in ["../secret", "/etc/passwd", "a/../../secret", ".tmp/x", ""] {
            assert!(matches!(store.get(key, None).await, Err(BlobError::InvalidKey(_))), "{key}");
            assert!(matches!(store.size(key).await, Err(BlobError::InvalidKey(_))), "{key}");
            assert!(matches!(store.delete(key).await, Err(BlobError::InvalidKey(_))), "{key}");
            let put = store.put_stream(key, chunks(vec![Ok(b"x".to_vec())]), 10).await;
            assert!(matches!(put, Err(BlobError::InvalidKey(_))), "{key}");
        }
        assert!(dir.path().join("secret").exists());
    }

    #[tokio::test]
    async fn stale_temporary_files_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        BlobStore::local(dir.path().to_path_buf()).unwrap();
        let leftover = dir.path().join(".tmp").join("crashed.part");
        std::fs::write(&leftover, "half a body").unwrap();
        let written: DateTime<Utc> = std::fs::metadata(&leftover).unwrap().modified().unwrap().into();
        assert_eq!(
            remove_stale_temp_files(&dir.path().join(".tmp"), written + chrono::Duration::minutes(59)).unwrap(),
            0
        );
        assert!(leftover.exists(), "an upload in progress keeps its file");
        assert_eq!(
            remove_stale_temp_files(&dir.path().join(".tmp"), written + chrono::Duration::minutes(61)).unwrap(),
            1
        );
        assert!(!leftover.exists());
    }
}
