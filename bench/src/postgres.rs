//! A fresh PostgreSQL database per run, created and dropped through an admin URL with `psql`.
//!
//! The harness compiles no database driver: `psql` ships with every PostgreSQL install, and the
//! few statements here are all it needs (the heartbeat peer's table and seed go through
//! [`FreshDatabase::execute`] too). [`FreshDatabase`] is a guard; dropping it drops the database
//! (after the server has been stopped, which the caller guarantees by drop order).

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use rand::distributions::{Alphanumeric, DistString};

/// A database (`herd_bench_<random>`, or a name of the caller's) that exists until this value is dropped.
pub struct FreshDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl FreshDatabase {
    /// Creates the database `herd_bench_<random>` through `admin_url` (any database the role can
    /// connect to).
    pub fn create(admin_url: &str) -> Result<FreshDatabase> {
        let suffix = Alphanumeric.sample_string(&mut rand::thread_rng(), 12).to_lowercase();
        FreshDatabase::create_named(admin_url, format!("herd_bench_{suffix}"))
    }

    /// Creates the database `name` (lowercase letters, digits and `_` only) through `admin_url`.
    pub fn create_named(admin_url: &str, name: String) -> Result<FreshDatabase> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            bail!("not a plain database name: {name:?}");
        }
        let url = with_database(admin_url, &name)?;
        psql(admin_url, &format!("CREATE DATABASE {name}")).with_context(|| format!("creating database {name}"))?;
        eprintln!("created PostgreSQL database {name}");
        Ok(FreshDatabase { admin_url: admin_url.to_string(), name, url })
    }

    /// The URL herd connects to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `statements` (one or more, `;`-separated) in this database.
    pub fn execute(&self, statements: &str) -> Result<()> {
        psql(&self.url, statements)
    }

    /// Runs the SQL file at `path` in this database.
    pub fn execute_file(&self, path: &Path) -> Result<()> {
        let statements = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        psql(&self.url, &statements).with_context(|| format!("running {}", path.display()))
    }
}

impl Drop for FreshDatabase {
    fn drop(&mut self) {
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        match psql(&self.admin_url, &statement) {
            Ok(()) => eprintln!("dropped PostgreSQL database {}", self.name),
            Err(error) => eprintln!("herd-bench: dropping database {}: {error:#}", self.name),
        }
    }
}

fn psql(url: &str, statement: &str) -> Result<()> {
    let output = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", statement])
        .stdin(Stdio::null())
        .output()
        .context("running psql (the PostgreSQL client is needed for --database-url)")?;
    if !output.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// `url` with its database path replaced by `database`, query string kept.
fn with_database(url: &str, database: &str) -> Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let Some(scheme_end) = base.find("://") else {
        bail!("--database-url is not a URL: {url}");
    };
    let authority_start = scheme_end + 3;
    let authority_end = base[authority_start..].find('/').map_or(base.len(), |slash| authority_start + slash);
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_path() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "herd_bench_x").ok(),
            Some("postgres://postgres@127.0.0.1:5432/herd_bench_x".to_string())
        );
        assert_eq!(
            with_database("postgresql://u:p@host/db?sslmode=disable", "b").ok(),
            Some("postgresql://u:p@host/b?sslmode=disable".to_string())
        );
        assert_eq!(with_database("postgres://host:5432", "b").ok(), Some("postgres://host:5432/b".to_string()));
        assert!(with_database("not a url", "b").is_err());
    }
}
