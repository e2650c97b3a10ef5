//! Short-lived signed download URLs (`/downloads/packages/{id}?expires=…&signature=…`): a link
//! that needs no `Authorization` header, so a CDN or caching proxy in front of herd can serve
//! one artifact to many devices. herd hands one out only to a caller that may download the
//! package (`GET /packages/{id}/download-url`, `GET /devices/self/packages/{id}/download-url`);
//! whoever holds it may download until it expires.
//!
//! The signature is HMAC-SHA256 over a fixed label, the package's tenant id, its id, its
//! SHA-256 and the expiry (Unix seconds), keyed with [`DownloadSigner::PURPOSE`]'s key from
//! `CertificateService::derive_key` (the same on every instance of a database and across
//! restarts). It is checked in constant time against the stored row, so a link for another
//! package, another content, another tenant or a later expiry does not verify. The expiry is
//! rounded up to a whole minute, so every device that asks for a package's link in the same
//! minute gets the same URL and a cache keyed on the URL holds one copy.

use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::store::PackageRow;
use herd_domain::ids::{PackageId, TenantId};

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks download links. One per process, in `AppState`.
pub(crate) struct DownloadSigner {
    key: [u8; 32],
    ttl: Duration,
    /// `HERD_PUBLIC_URL`: links are absolute under it; without it they are a path and query.
    base: Option<String>,
}

impl std::fmt::Debug for DownloadSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadSigner")
            .field("key", &"[redacted]")
            .field("ttl", &self.ttl)
            .field("base", &self.base)
            .finish()
    }
}

/// A signed link: under `HERD_PUBLIC_URL` when it is set, else a path and query to resolve
/// against the server that handed it out.
pub(crate) struct SignedLink {
    pub url: String,
    /// Unix seconds.
    pub expires: i64,
}

impl DownloadSigner {
    /// The label of this key in `CertificateService::derive_key`.
    pub(crate) const PURPOSE: &'static str = "package download urls";

    pub(crate) fn new(key: [u8; 32], ttl: Duration, base: Option<String>) -> Self {
        Self { key, ttl, base }
    }

    fn mac(&self, tenant: TenantId, id: PackageId, sha256: &str, expires: i64) -> HmacSha256 {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(format!("herd package download v1\0{tenant}\0{id}\0{sha256}\0{expires}").as_bytes());
        mac
    }

    /// A link to `row` (of `tenant`) valid from `now` (Unix seconds) for the TTL, rounded up to
    /// the next whole minute.
    pub(crate) fn sign(&self, tenant: TenantId, row: &PackageRow, now: i64) -> SignedLink {
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(86_400);
        let expires = (now.saturating_add(ttl)).div_euclid(60).saturating_add(1).saturating_mul(60);
        let signature = self.mac(tenant, row.id, &row.sha256, expires).finalize().into_bytes();
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature);
        let base = self.base.as_deref().unwrap_or("");
        SignedLink {
            url: format!("{base}/downloads/packages/{}?expires={expires}&signature={signature}", row.id),
            expires,
        }
    }

    /// Whether `signature` (base64url) is this key's for `row` of `tenant` and `expires`;
    /// compared in constant time. The caller checks the expiry.
    pub(crate) fn verify(&self, tenant: TenantId, row: &PackageRow, expires: i64, signature: &str) -> bool {
        let Ok(signature) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        self.mac(tenant, row.id, &row.sha256, expires).verify_slice(&signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_domain::status::PackageKind;

    fn row(sha256: &str) -> PackageRow {
        PackageRow {
            id: PackageId::new(),
            kind: PackageKind::File,
            name: "a".into(),
            version: "1".into(),
            version_code: 1,
            target_models: herd_store::Json(Vec::new()),
            notes: None,
            sha256: sha256.into(),
            size: 1,
            blob_key: "k".into(),
            content_type: "application/octet-stream".into(),
            created_by: "t".into(),
            created_at: 0,
        }
    }

    fn parts(url: &str) -> (i64, String) {
        let query = url.split_once('?').unwrap().1;
        let mut expires = 0;
        let mut signature = String::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "expires" => expires = value.parse().unwrap(),
                "signature" => signature = value.into_owned(),
                _ => panic!("{name}"),
            }
        }
        (expires, signature)
    }

    #[test]
    fn a_link_verifies_only_for_its_package_content_tenant_and_expiry() {
        let signer = DownloadSigner::new([7; 32], Duration::from_secs(900), None);
        let (tenant, package) = (TenantId::new(), row("ab"));
        let link = signer.sign(tenant, &package, 1_000_030);
        assert!(link.url.starts_with(&format!("/downloads/packages/{}?", package.id)));
        assert_eq!(link.expires, 1_000_980, "now + 15 min, rounded up to a minute");
        assert_eq!(signer.sign(tenant, &package, 1_000_079).url, link.url, "one URL per package per minute");
        let (expires, signature) = parts(&link.url);
        assert_eq!(expires, link.expires);
        assert!(signer.verify(tenant, &package, expires, &signature));
        assert!(!signer.verify(tenant, &package, expires + 60, &signature), "a later expiry");
        assert!(!signer.verify(TenantId::new(), &package, expires, &signature), "another tenant");
        assert!(!signer.verify(tenant, &row("ab"), expires, &signature), "another package");
        let mut changed = package.clone();
        changed.sha256 = "cd".into();
        assert!(!signer.verify(tenant, &changed, expires, &signature), "other content");
        assert!(!signer.verify(tenant, &package, expires, "not base64!"));
        let mut tampered = signature.clone().into_bytes();
        tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
        assert!(!signer.verify(tenant, &package, expires, std::str::from_utf8(&tampered).unwrap()));
        let other_key = DownloadSigner::new([8; 32], Duration::from_secs(900), None);
        assert!(!other_key.verify(tenant, &package, expires, &signature), "another key");
        assert!(!format!("{signer:?}").contains("7, 7"), "the key is not printed");
        let public = DownloadSigner::new([7; 32], Duration::from_secs(900), Some("https://herd.example".into()));
        assert_eq!(public.sign(tenant, &package, 1_000_030).url, format!("https://herd.example{}", link.url));
    }
}
