//! The seed's certificate and key files (`HERD_CERT_STORE=file`), written by one thread a
//! group at a time.
//!
//! Each file is written as [`crate::files::write_atomically`] does, to a temporary file that is
//! made durable before it is renamed over the old one, so a reader or a crash sees the old file
//! or the new one, never half of one. What the group changes is the cost: 64 requests writing
//! their own files contended for the directory's lock and paid one `fsync` each (20 % of the
//! server's time at c=64, BENCHMARKS.md "CSR signing"). Here every file of the group is written
//! first, then one `syncfs` makes them all durable (one `fsync` per file for a group of one, or
//! where `syncfs` fails or does not exist), and then they are renamed into place, in the order
//! the requests came.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use anyhow::Context;
use tokio::sync::oneshot;

use crate::files::{create_private_dir, write_temporary};

/// The most jobs one group takes.
const GROUP: usize = 256;

/// One device's files: the certificate, and the key for a server-generated key (`None`: the
/// device's own key, so a key file a previous certificate left is removed first).
struct Job {
    cert_path: PathBuf,
    key_path: PathBuf,
    certificate: String,
    key: Option<String>,
    done: oneshot::Sender<anyhow::Result<()>>,
}

/// A job whose temporary files are written, not yet durable or in place.
struct Staged {
    job: Job,
    key_tmp: Option<(PathBuf, File)>,
    cert_tmp: (PathBuf, File),
}

/// The handle to the writing thread; the thread ends when the handle is dropped.
pub(crate) struct FileWriter {
    jobs: mpsc::Sender<Job>,
}

impl FileWriter {
    pub(crate) fn start() -> anyhow::Result<FileWriter> {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("herd-cert-files".into())
            .spawn(move || run(queue))
            .context("cannot start the certificate file writer")?;
        Ok(FileWriter { jobs })
    }

    /// Writes a device's files; answers once they are durable and in place.
    pub(crate) async fn write(
        &self,
        cert_path: PathBuf,
        key_path: PathBuf,
        certificate: String,
        key: Option<String>,
    ) -> anyhow::Result<()> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(Job { cert_path, key_path, certificate, key, done })
            .map_err(|_| anyhow::anyhow!("the certificate file writer stopped"))?;
        answer.await.context("the certificate file writer stopped")?
    }
}

fn run(queue: mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        write_group(group);
    }
}

fn write_group(group: Vec<Job>) {
    let mut directories: HashSet<PathBuf> = HashSet::new();
    let mut staged: Vec<Staged> = Vec::with_capacity(group.len());
    for job in group {
        match stage(job, &mut directories) {
            Ok(ready) => staged.push(ready),
            Err((job, error)) => {
                let _ = job.done.send(Err(error));
            }
        }
    }
    if staged.is_empty() {
        return;
    }
    // Alone, a job syncs its own files: `syncfs` would also flush whatever else is dirty.
    let synced = staged.len() > 1 && sync_filesystem(&staged[0].cert_tmp.0);
    for ready in staged {
        let result = finish(&ready, synced);
        if result.is_err() {
            if let Some((tmp, _)) = &ready.key_tmp {
                let _ = std::fs::remove_file(tmp);
            }
            let _ = std::fs::remove_file(&ready.cert_tmp.0);
        }
        let _ = ready.job.done.send(result);
    }
}

/// Writes the job's temporary files (mode 0600 for the key, 0644 for the certificate).
fn stage(job: Job, directories: &mut HashSet<PathBuf>) -> Result<Staged, (Job, anyhow::Error)> {
    let key_tmp = match &job.key {
        Some(key) => match temporary(&job.key_path, key.as_bytes(), 0o600, directories) {
            Ok(tmp) => Some(tmp),
            Err(error) => return Err((job, error)),
        },
        None => None,
    };
    match temporary(&job.cert_path, job.certificate.as_bytes(), 0o644, directories) {
        Ok(cert_tmp) => Ok(Staged { job, key_tmp, cert_tmp }),
        Err(error) => {
            if let Some((tmp, _)) = &key_tmp {
                let _ = std::fs::remove_file(tmp);
            }
            Err((job, error))
        }
    }
}

fn temporary(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    directories: &mut HashSet<PathBuf>,
) -> anyhow::Result<(PathBuf, File)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !directories.contains(dir) {
        create_private_dir(dir)?;
        directories.insert(dir.to_path_buf());
    }
    write_temporary(path, bytes, mode)
}

/// Makes every dirty file of the filesystem holding `path` durable: true if it did.
#[cfg(target_os = "linux")]
fn sync_filesystem(path: &Path) -> bool {
    match File::open(path).and_then(|file| rustix::fs::syncfs(&file).map_err(std::io::Error::from)) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(error = %error, "syncfs failed; syncing the certificate files one by one");
            false
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn sync_filesystem(_path: &Path) -> bool {
    false
}

/// Makes the job's files durable unless the filesystem already was, then puts them in place.
fn finish(ready: &Staged, synced: bool) -> anyhow::Result<()> {
    let job = &ready.job;
    if !synced {
        if let Some((tmp, file)) = &ready.key_tmp {
            file.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        }
        let (tmp, file) = &ready.cert_tmp;
        file.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
    }
    match &ready.key_tmp {
        Some((tmp, _)) => {
            std::fs::rename(tmp, &job.key_path).with_context(|| format!("cannot write {}", job.key_path.display()))?
        }
        // A certificate for the device's own key (CSR): the previous server key no longer
        // belongs to the certificate file, so it goes first. The files are a matching pair or
        // there is no key file, at every moment.
        None => match std::fs::remove_file(&job.key_path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(anyhow::Error::new(error)
                    .context(format!("cannot remove the superseded key {}", job.key_path.display())))
            }
        },
    }
    std::fs::rename(&ready.cert_tmp.0, &job.cert_path)
        .with_context(|| format!("cannot write {}", job.cert_path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(root: &Path, device: &str) -> (PathBuf, PathBuf) {
        (root.join("public").join(format!("{device}-cert.pem")), root.join("private").join(format!("{device}-key.pem")))
    }

    /// Concurrent writes are grouped and each answered: the last write of a device wins, a
    /// certificate for the device's own key removes the old key file, a job that cannot be
    /// written fails alone, and no temporary file is left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_writes_each_land_or_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let writer = std::sync::Arc::new(FileWriter::start().unwrap());
        let mut writes = Vec::new();
        for n in 0..40 {
            let writer = std::sync::Arc::clone(&writer);
            let (cert, key) = paths(root, &format!("d{n}"));
            writes.push(tokio::spawn(async move {
                writer.write(cert, key, format!("cert {n}"), Some(format!("key {n}"))).await
            }));
        }
        // A directory that cannot be made: its parent is a file.
        std::fs::write(root.join("blocked"), "a file").unwrap();
        let blocked = writer
            .write(root.join("blocked").join("x-cert.pem"), root.join("private").join("x-key.pem"), "c".into(), None)
            .await;
        for write in writes {
            write.await.unwrap().unwrap();
        }
        assert!(blocked.is_err(), "a certificate under a file cannot be written");
        let (cert, key) = paths(root, "d7");
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "cert 7");
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "key 7");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        }

        // The device's own key next: its old key file goes, the certificate is replaced.
        writer.write(cert.clone(), key.clone(), "csr cert 7".into(), None).await.unwrap();
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "csr cert 7");
        assert!(!key.exists(), "the superseded key file is removed");

        for sub in ["public", "private"] {
            let leftovers: Vec<_> = std::fs::read_dir(root.join(sub))
                .unwrap()
                .filter_map(|entry| entry.ok())
                .filter(|entry| entry.file_name().to_string_lossy().ends_with(".tmp"))
                .collect();
            assert!(leftovers.is_empty(), "temporary files left in {sub}: {leftovers:?}");
        }
        assert_eq!(std::fs::read_dir(root.join("public")).unwrap().count(), 40);
    }
}
