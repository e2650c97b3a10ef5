//! Leaf (device) certificates: the request the server fills in, the key it certifies, the result,
//! and the exact profile of what gets signed.
//!
//! Owns the leaf profile: subject C/O/CN, a random 126-bit positive serial, notBefore/notAfter,
//! basicConstraints cA=FALSE, keyUsage digitalSignature (+ keyEncipherment for RSA keys),
//! extendedKeyUsage clientAuth, subject and authority key identifiers, and an optional CRL
//! distribution point. Nothing from a CSR other than its public key reaches these parameters.

use rcgen::string::PrintableString;
use rcgen::{
    CertificateParams, CrlDistributionPoint, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyUsagePurpose, PublicKeyData, SerialNumber,
};

use crate::public_key::KeyKind;
use crate::time_conv::{add_days, from_unix};
use crate::{CertificateInfo, DeviceKeyPair, PkiError, VerifiedCsr};

/// Upper bound on commonName and organizationName length (ub-common-name and
/// ub-organization-name in RFC 5280 Appendix A).
const MAX_NAME_CHARS: usize = 64;
/// Serial numbers are this many random bytes (RFC 5280 allows at most 20 octets).
const SERIAL_BYTES: usize = 16;

/// What the server asks the CA to certify. The subject is taken from here, never from a CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRequest {
    /// Subject commonName, e.g. "Device-{deviceId}". 1 to 64 characters.
    pub common_name: String,
    /// Subject organizationName; omitted from the subject when empty. At most 64 characters.
    pub organization: String,
    /// Subject countryName: two ASCII letters (ISO 3166 alpha-2); omitted when empty.
    pub country: String,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// Validity in whole days from `not_before`; at least 1.
    pub validity_days: u32,
    /// An http(s) URL of the CA's CRL, written as the CRL distribution point when present.
    pub crl_distribution_url: Option<String>,
}

/// Whose public key a leaf certifies: a key the server generated, or a verified CSR's key.
#[derive(Debug, Clone, Copy)]
pub enum LeafKey<'a> {
    /// A server-generated key pair (the private key is then handed to the device).
    Generated(&'a DeviceKeyPair),
    /// The device's own key, proven by a verified CSR.
    Csr(&'a VerifiedCsr),
}

/// A freshly signed leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// The certificate, PEM ("-----BEGIN CERTIFICATE-----").
    pub pem: String,
    /// Serial, fingerprint, names and validity, read back from `der`.
    pub info: CertificateInfo,
}

/// Builds the rcgen parameters for a leaf certifying `public_key`, of kind `kind`.
pub(crate) fn leaf_params(
    request: &LeafRequest,
    kind: KeyKind,
    public_key: &impl PublicKeyData,
) -> Result<CertificateParams, PkiError> {
    let not_after = add_days(request.not_before, request.validity_days, "validity_days")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject_name(&request.common_name, &request.organization, &request.country)?;
    params.not_before = from_unix(request.not_before, "not_before")?;
    params.not_after = from_unix(not_after, "not_before + validity_days")?;
    params.serial_number = Some(random_serial()?);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if kind.is_rsa() {
        // RSA keys can also carry TLS 1.2 RSA key exchange; EC keys cannot encipher, and RFC 5480
        // forbids keyEncipherment for id-ecPublicKey.
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_identifier(public_key));
    if let Some(url) = &request.crl_distribution_url {
        validate_crl_url(url)?;
        params.crl_distribution_points = vec![CrlDistributionPoint { uris: vec![url.clone()] }];
    }
    Ok(params)
}

/// Builds a subject C=..,O=..,CN=.. (encoded in that order, so RFC 4514 prints "CN=..,O=..,C=..").
pub(crate) fn subject_name(
    common_name: &str,
    organization: &str,
    country: &str,
) -> Result<DistinguishedName, PkiError> {
    validate_text("common_name", common_name)?;
    if common_name.is_empty() {
        return Err(PkiError::InvalidRequest("common_name must not be empty".to_string()));
    }
    validate_text("organization", organization)?;
    let mut name = DistinguishedName::new();
    if !country.is_empty() {
        if country.len() != 2 || !country.bytes().all(|byte| byte.is_ascii_alphabetic()) {
            return Err(PkiError::InvalidRequest(format!(
                "country must be a two-letter ISO 3166 code, not {country:?}"
            )));
        }
        let code = PrintableString::try_from(country.to_ascii_uppercase())
            .map_err(|error| PkiError::InvalidRequest(format!("country: {error}")))?;
        name.push(DnType::CountryName, DnValue::PrintableString(code));
    }
    if !organization.is_empty() {
        name.push(DnType::OrganizationName, DnValue::Utf8String(organization.to_string()));
    }
    name.push(DnType::CommonName, DnValue::Utf8String(common_name.to_string()));
    Ok(name)
}

/// The subjectKeyIdentifier of `public_key` by RFC 7093 method 1: the leftmost 160 bits of the
/// SHA-256 hash of the subjectPublicKey BIT STRING's value. (rcgen's own `KeyIdMethod::Sha256`
/// hashes the whole SubjectPublicKeyInfo, which no RFC names; pkilint flags it as an unknown
/// method.)
pub(crate) fn key_identifier(public_key: &impl PublicKeyData) -> Vec<u8> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public_key.der_bytes());
    digest.as_ref()[..20].to_vec()
}

/// A random serial of [`SERIAL_BYTES`] bytes: top bit cleared so it is positive, next bit set so
/// it is never zero and always encodes in exactly 16 octets (126 bits of randomness).
pub(crate) fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; SERIAL_BYTES];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| PkiError::Crypto("the system random generator failed".to_string()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn validate_text(field: &str, value: &str) -> Result<(), PkiError> {
    if value.chars().count() > MAX_NAME_CHARS {
        return Err(PkiError::InvalidRequest(format!("{field} is longer than {MAX_NAME_CHARS} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(PkiError::InvalidRequest(format!("{field} must not contain control characters")));
    }
    Ok(())
}

fn validate_crl_url(url: &str) -> Result<(), PkiError> {
    let well_formed = (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() > "https://".len()
        && url.bytes().all(|byte| byte.is_ascii_graphic());
    if well_formed {
        Ok(())
    } else {
        Err(PkiError::InvalidRequest(format!(
            "crl_distribution_url must be an absolute http(s) URL without spaces, not {url:?}"
        )))
    }
}
