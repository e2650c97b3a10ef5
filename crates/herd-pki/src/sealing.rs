//! Sealing secrets at rest: AES-256-GCM under a 32-byte key-encryption key (KEK), used by the
//! server's `database` certificate store to encrypt private keys.
//!
//! Format of a sealed value: `nonce (12 random bytes) || ciphertext || tag (16 bytes)`. The
//! associated data is not stored; the caller must pass the same `aad` to [`open`] (the server
//! binds a sealed key to its row, e.g. the certificate id, so ciphertexts cannot be swapped).
//! A random 96-bit nonce per seal keeps the collision risk negligible for far more than the
//! 2^32 seals NIST allows per key; this module must not be used with counters or caller nonces.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

use crate::PkiError;

/// Bytes that [`seal`] adds to the plaintext: the nonce and the GCM tag.
pub const OVERHEAD: usize = NONCE_LEN + 16;

/// Encrypts and authenticates `plaintext` (binding `aad`) under `kek`.
///
/// Fails only if the system random generator fails.
pub fn seal(kek: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, PkiError> {
    let key = key(kek)?;
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce)
        .map_err(|_| PkiError::Crypto("the system random generator failed".to_string()))?;
    let mut sealed = Vec::with_capacity(plaintext.len() + OVERHEAD);
    sealed.extend_from_slice(&nonce);
    let mut in_out = plaintext.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut in_out)
        .map_err(|_| PkiError::Crypto("AES-256-GCM sealing failed".to_string()))?;
    sealed.extend_from_slice(&in_out);
    Ok(sealed)
}

/// Authenticates and decrypts a value produced by [`seal`] with the same `kek` and `aad`.
///
/// Any mismatch (wrong key, wrong `aad`, a flipped bit, truncation) is [`PkiError::Unseal`].
pub fn open(kek: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, PkiError> {
    if sealed.len() < OVERHEAD {
        return Err(PkiError::Unseal);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| PkiError::Unseal)?;
    let key = key(kek)?;
    let mut in_out = ciphertext.to_vec();
    let plaintext_len = key.open_in_place(nonce, Aad::from(aad), &mut in_out).map_err(|_| PkiError::Unseal)?.len();
    in_out.truncate(plaintext_len);
    Ok(in_out)
}

fn key(kek: &[u8; 32]) -> Result<LessSafeKey, PkiError> {
    UnboundKey::new(&AES_256_GCM, kek)
        .map(LessSafeKey::new)
        .map_err(|_| PkiError::Crypto("AES-256-GCM key setup failed".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEK: [u8; 32] = [7u8; 32];

    #[test]
    fn round_trip() {
        let sealed = seal(&KEK, b"private key bytes", b"cert-1").unwrap();
        assert_eq!(sealed.len(), b"private key bytes".len() + OVERHEAD);
        assert_eq!(open(&KEK, &sealed, b"cert-1").unwrap(), b"private key bytes");
        assert_eq!(open(&KEK, &seal(&KEK, b"", b"").unwrap(), b"").unwrap(), b"");
    }

    #[test]
    fn nonces_differ_between_seals() {
        let first = seal(&KEK, b"same", b"").unwrap();
        let second = seal(&KEK, b"same", b"").unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn tampering_wrong_key_wrong_aad_and_truncation_are_detected() {
        let sealed = seal(&KEK, b"private key bytes", b"cert-1").unwrap();
        for index in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[index] ^= 0x01;
            assert!(
                matches!(open(&KEK, &tampered, b"cert-1"), Err(PkiError::Unseal)),
                "flipping byte {index} went unnoticed"
            );
        }
        assert!(matches!(open(&[8u8; 32], &sealed, b"cert-1"), Err(PkiError::Unseal)));
        assert!(matches!(open(&KEK, &sealed, b"cert-2"), Err(PkiError::Unseal)));
        assert!(matches!(open(&KEK, &sealed[..sealed.len() - 1], b"cert-1"), Err(PkiError::Unseal)));
        assert!(matches!(open(&KEK, &sealed[..OVERHEAD - 1], b"cert-1"), Err(PkiError::Unseal)));
    }
}
