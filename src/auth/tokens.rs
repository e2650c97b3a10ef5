//! Secrets: generation and hashing. Only hashes are stored.
//!
//! Tokens are 256 random bits, so a fast hash (SHA-256 with a domain-separation prefix) is
//! as good as a slow one and keeps the heartbeat path cheap. Passwords are low-entropy and get
//! argon2id (see [`hash_password`]).

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The kind of credential a token is; its prefix tells the authenticator where to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// API tokens and login sessions of tenant members.
    Member,
    Enrollment,
    Device,
}

impl TokenKind {
    pub(crate) fn prefix(self) -> &'static str {
        match self {
            TokenKind::Member => "herd_at_",
            TokenKind::Enrollment => "herd_et_",
            TokenKind::Device => "herd_dt_",
        }
    }

    /// The kind a presented token claims to be. Tokens without a known prefix (such as an
    /// operator-chosen `HERD_BOOTSTRAP_TOKEN`) are member tokens.
    pub(crate) fn of(token: &str) -> TokenKind {
        if token.starts_with(TokenKind::Enrollment.prefix()) {
            TokenKind::Enrollment
        } else if token.starts_with(TokenKind::Device.prefix()) {
            TokenKind::Device
        } else {
            TokenKind::Member
        }
    }
}

/// A fresh secret of the given kind: its prefix plus 43 characters of base64url (256 bits).
pub(crate) fn generate(kind: TokenKind) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{}{}", kind.prefix(), base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The stored form of a token.
pub(crate) fn hash(token: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"herd-token-v1:");
    hasher.update(token.as_bytes());
    hex::encode(hasher.finalize())
}

/// argon2id with the crate's default (OWASP-recommended) parameters. CPU-heavy: call it from
/// `spawn_blocking`.
pub(crate) fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash password: {e}"))
}

/// Checks a password against a stored argon2 hash. CPU-heavy: call it from `spawn_blocking`.
/// It takes a hashing turn of [`LoginLimits`](super::limits::LoginLimits) as proof that the
/// number of hashes running at once is bounded.
pub(crate) fn verify_password(_turn: &super::limits::HashSlot, password: &str, stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A hash that no password matches, verified against when a username does not exist so that
/// a login takes as long for an unknown user as for a wrong password.
pub(crate) fn dummy_password_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("herd-dummy-password-never-valid").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_unique_and_hashed() {
        let a = generate(TokenKind::Device);
        let b = generate(TokenKind::Device);
        assert!(a.starts_with("herd_dt_"));
        assert_ne!(a, b);
        assert_eq!(TokenKind::of(&a), TokenKind::Device);
        assert_eq!(TokenKind::of("my-own-bootstrap-token"), TokenKind::Member);
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a).len(), 64);
    }

    #[test]
    fn passwords_verify() {
        let stored = hash_password("correct horse").unwrap();
        assert!(stored.starts_with("$argon2id$"));
        let limits = super::super::limits::LoginLimits::new(crate::config::LoginLimitSettings::default());
        let turn = limits.try_hash_slot().unwrap();
        assert!(verify_password(&turn, "correct horse", &stored));
        assert!(!verify_password(&turn, "wrong", &stored));
        assert!(!verify_password(&turn, "x", "not a hash"));
    }
}
