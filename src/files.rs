//! Files herd writes beside its database (the CA, certificate and key files, the first
//! admin token): one way to write them so that a crash never leaves half a file, and the
//! modes of the data directory and the SQLite files, which hold webhook secrets and sealed
//! keys: directories herd creates are 0700, the database files 0600, key files 0600.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Creates `path`, which must not exist yet, with permissions `mode` from the start (no window in
/// which another user could open it).
pub(crate) fn create_new(path: &Path, mode: u32) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path).with_context(|| format!("cannot create {}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader sees the old file or the new one, never a half-written one.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    create_private_dir(path.parent().unwrap_or(Path::new(".")))?;
    let (tmp, file) = write_temporary(path, bytes, mode)?;
    let result = file
        .sync_all()
        .map_err(anyhow::Error::new)
        .and_then(|()| std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display())));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to a new, uniquely named temporary file beside `path` (whose directory must
/// exist) with `mode`, not yet synced: the first half of an atomic replace, for callers that
/// sync several files at once. Nothing is left behind if the write fails.
pub(crate) fn write_temporary(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<(PathBuf, File)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|name| name.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{file_name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let mut file = create_new(&tmp, mode)?;
    if let Err(error) = file.write_all(bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(error).context(format!("cannot write {}", tmp.display())));
    }
    Ok((tmp, file))
}

/// Creates `dir` (and any missing parents) readable by herd's user only (0700). A directory that
/// already exists keeps its mode (it is the operator's choice), but one that others can read is
/// reported in the log, since the files in it are what herd keeps secret.
pub(crate) fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let existed = dir.is_dir();
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    if existed {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                directory = %dir.display(),
                mode = format!("{mode:o}"),
                "herd's directory can be read by other users; consider `chmod 700` on it"
            );
        }
    }
    Ok(())
}

/// Makes sure the SQLite database of `database_url` (if it is one, on disk) and its `-wal`,
/// `-shm` and `-journal` files can be read by herd's user only (0600).
///
/// A new database file is created empty, 0600, before SQLite opens it (SQLite treats an empty
/// file as an empty database, and creates the `-wal` and `-shm` files with the mode of the
/// database file). Files of an existing database are tightened to 0600: herd made them, and
/// earlier versions made them 0644.
pub(crate) fn secure_sqlite_files(database_url: &str) -> anyhow::Result<()> {
    let Some(path) = sqlite_file(database_url) else { return Ok(()) };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error).with_context(|| format!("cannot create {}", path.display())),
    }
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm", "-journal"] {
        use std::os::unix::fs::PermissionsExt;
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        if let Ok(metadata) = std::fs::metadata(&file) {
            if metadata.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("cannot make {} private (0600)", file.display()))?;
            }
        }
    }
    Ok(())
}

/// The file of a SQLite URL (`sqlite://PATH`, `sqlite:PATH`, with or without `?options`), or
/// `None` for PostgreSQL and in-memory databases.
pub(crate) fn sqlite_file(database_url: &str) -> Option<std::path::PathBuf> {
    let rest = database_url.strip_prefix("sqlite://").or_else(|| database_url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path.starts_with(':') || path.starts_with("file:") {
        return None;
    }
    Some(std::path::PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_files_are_found_in_urls() {
        assert_eq!(sqlite_file("sqlite:///var/lib/herd/herd.db"), Some("/var/lib/herd/herd.db".into()));
        assert_eq!(sqlite_file("sqlite://herd-data/herd.db?mode=rwc"), Some("herd-data/herd.db".into()));
        assert_eq!(sqlite_file("sqlite:herd.db"), Some("herd.db".into()));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://u@127.0.0.1/herd"), None);
    }
}
