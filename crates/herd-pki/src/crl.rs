//! Certificate revocation lists: revocation reasons with their RFC 5280 names, the entries the
//! server passes in, and the CRL profile.
//!
//! Owns the CRL profile: v2, signed by the CA with its certificate's signature algorithm,
//! authorityKeyIdentifier equal to the CA certificate's subjectKeyIdentifier, cRLNumber, and per
//! entry the serial, revocation date and reasonCode (absent for `unspecified`, as RFC 5280
//! §5.3.1 recommends). It must not decide which certificates are revoked or when to publish.

use std::fmt;
use std::str::FromStr;

use rcgen::{RevokedCertParams, SerialNumber};

use crate::time_conv::from_unix;
use crate::{hex, PkiError};

/// RFC 5280 §5.3.1 CRLReason, with the ASN.1 value names as its text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RevocationReason {
    /// "unspecified" (0); written as a CRL entry without a reasonCode extension.
    #[default]
    Unspecified,
    /// "keyCompromise" (1).
    KeyCompromise,
    /// "cACompromise" (2).
    CaCompromise,
    /// "affiliationChanged" (3).
    AffiliationChanged,
    /// "superseded" (4).
    Superseded,
    /// "cessationOfOperation" (5).
    CessationOfOperation,
    /// "certificateHold" (6).
    CertificateHold,
    /// "removeFromCRL" (8).
    RemoveFromCrl,
    /// "privilegeWithdrawn" (9).
    PrivilegeWithdrawn,
    /// "aACompromise" (10).
    AaCompromise,
}

impl RevocationReason {
    /// Every reason, in code order.
    pub const ALL: [RevocationReason; 10] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::CertificateHold,
        RevocationReason::RemoveFromCrl,
        RevocationReason::PrivilegeWithdrawn,
        RevocationReason::AaCompromise,
    ];

    /// Whether a revocation for this reason is final. `certificateHold` suspends a certificate
    /// and `removeFromCRL` lifts a hold: both make a revocation reversible, which herd's never
    /// are, so it refuses them.
    pub fn is_final(self) -> bool {
        !matches!(self, RevocationReason::CertificateHold | RevocationReason::RemoveFromCrl)
    }

    /// The RFC 5280 ASN.1 name, e.g. "keyCompromise", "cACompromise", "removeFromCRL".
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::CaCompromise => "cACompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
            RevocationReason::CertificateHold => "certificateHold",
            RevocationReason::RemoveFromCrl => "removeFromCRL",
            RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
            RevocationReason::AaCompromise => "aACompromise",
        }
    }

    /// The CRLReason code written into the CRL.
    pub fn code(self) -> u8 {
        self.to_rcgen() as u8
    }

    fn to_rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            RevocationReason::Unspecified => R::Unspecified,
            RevocationReason::KeyCompromise => R::KeyCompromise,
            RevocationReason::CaCompromise => R::CaCompromise,
            RevocationReason::AffiliationChanged => R::AffiliationChanged,
            RevocationReason::Superseded => R::Superseded,
            RevocationReason::CessationOfOperation => R::CessationOfOperation,
            RevocationReason::CertificateHold => R::CertificateHold,
            RevocationReason::RemoveFromCrl => R::RemoveFromCrl,
            RevocationReason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
            RevocationReason::AaCompromise => R::AaCompromise,
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The text was not one of the RFC 5280 reason names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown revocation reason {0:?}; expected one of unspecified, keyCompromise, cACompromise, \
     affiliationChanged, superseded, cessationOfOperation, certificateHold, removeFromCRL, \
     privilegeWithdrawn, aACompromise"
)]
pub struct UnknownRevocationReason(pub String);

impl FromStr for RevocationReason {
    type Err = UnknownRevocationReason;

    /// Accepts the RFC 5280 names case-insensitively, so "caCompromise" and "removeFromCrl"
    /// (the camelCase a JSON client is likely to send) are understood too.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        RevocationReason::ALL
            .into_iter()
            .find(|reason| reason.as_str().eq_ignore_ascii_case(text))
            .ok_or_else(|| UnknownRevocationReason(text.to_string()))
    }
}

/// One revoked certificate, as the server records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    /// The certificate's serial as hex ([`crate::CertificateInfo::serial_hex`]; colons and
    /// upper case are tolerated).
    pub serial_hex: String,
    /// When the revocation was processed, unix seconds.
    pub revoked_at: i64,
    /// Why.
    pub reason: RevocationReason,
}

/// A signed CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    /// The CRL, DER (what `GET /ca/crl` serves by default).
    pub der: Vec<u8>,
    /// The CRL, PEM ("-----BEGIN X509 CRL-----").
    pub pem: String,
}

/// Largest serial RFC 5280 allows, in octets.
const MAX_SERIAL_OCTETS: usize = 20;

/// Converts the server's entries into rcgen's, validating serials and dates.
pub(crate) fn revoked_params(revoked: &[RevokedEntry]) -> Result<Vec<RevokedCertParams>, PkiError> {
    revoked
        .iter()
        .map(|entry| {
            let serial = hex::decode(&entry.serial_hex)
                .filter(|bytes| {
                    let significant = bytes.iter().skip_while(|byte| **byte == 0).count();
                    (1..=MAX_SERIAL_OCTETS).contains(&significant)
                })
                .ok_or_else(|| {
                    PkiError::InvalidRequest(format!(
                        "revoked serial {:?} is not a non-zero hex number of at most 20 octets",
                        entry.serial_hex
                    ))
                })?;
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from(serial),
                revocation_time: from_unix(entry.revoked_at, "revoked_at")?,
                reason_code: match entry.reason {
                    RevocationReason::Unspecified => None,
                    other => Some(other.to_rcgen()),
                },
                invalidity_date: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_round_trip() {
        for reason in RevocationReason::ALL {
            assert_eq!(reason.as_str().parse::<RevocationReason>(), Ok(reason));
        }
        assert_eq!("caCompromise".parse::<RevocationReason>(), Ok(RevocationReason::CaCompromise));
        assert_eq!(RevocationReason::RemoveFromCrl.code(), 8);
        assert!("stolen".parse::<RevocationReason>().is_err());
    }

    #[test]
    fn rejects_bad_serials() {
        let entry = |serial: &str| RevokedEntry {
            serial_hex: serial.to_string(),
            revoked_at: 1_700_000_000,
            reason: RevocationReason::Superseded,
        };
        assert!(revoked_params(&[entry("00")]).is_err());
        assert!(revoked_params(&[entry("xyz")]).is_err());
        assert!(revoked_params(&[entry(&"ab".repeat(21))]).is_err());
        assert!(revoked_params(&[entry("4a:BC")]).is_ok());
    }
}
