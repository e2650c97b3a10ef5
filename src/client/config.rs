//! The CLI's one file of its own: which server `herd login` signed in to and the token it got.
//! It lives in the user's config directory (`$XDG_CONFIG_HOME/herd/client.toml`, else
//! `~/.config/herd/client.toml`; `HERD_CLI_CONFIG` names another file), 0600 in a 0700
//! directory, since the token is a bearer credential. Nothing here knows the server's settings.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// What `herd login` stores.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct StoredLogin {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// The bearer token every later command sends.
    pub token: String,
    /// `api` (an API token given to `herd login --token`) or `session` (a login with a
    /// password, which `herd logout` ends on the server too).
    pub credential: String,
}

/// Where the CLI keeps its login.
pub(crate) fn path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("HERD_CLI_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME")
                .filter(|p| !p.is_empty())
                .context("neither XDG_CONFIG_HOME nor HOME is set; set HERD_CLI_CONFIG to a file path")?;
            PathBuf::from(home).join(".config")
        }
    };
    Ok(base.join("herd").join("client.toml"))
}

/// The stored login, or `None` when there is none.
pub(crate) fn load(path: &Path) -> anyhow::Result<Option<StoredLogin>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let login = toml::from_str(&text).with_context(|| format!("{} is not a herd login file", path.display()))?;
    Ok(Some(login))
}

/// Writes the login atomically, the file 0600 and a directory the CLI creates 0700.
pub(crate) fn save(path: &Path, login: &StoredLogin) -> anyhow::Result<()> {
    let text = toml::to_string(login).context("cannot encode the login")?;
    crate::files::write_atomically(path, text.as_bytes(), 0o600)
}

/// Removes the stored login; true if there was one.
pub(crate) fn remove(path: &Path) -> anyhow::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error).with_context(|| format!("cannot remove {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_round_trips_through_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("client.toml");
        assert_eq!(load(&path).unwrap(), None);
        let login =
            StoredLogin { server: "http://127.0.0.1:1".into(), token: "secret".into(), credential: "api".into() };
        save(&path, &login).unwrap();
        assert_eq!(load(&path).unwrap(), Some(login));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        }
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
    }
}
