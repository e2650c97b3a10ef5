//! Reading certificates back: [`CertificateInfo`] (serial, fingerprint, names, validity) for the
//! CA, for every issued leaf and for certificates uploaded to the validate endpoint.
//!
//! Owns the textual forms the server stores and compares: lowercase hex serials without leading
//! zero bytes, lowercase hex SHA-256 fingerprints without colons, and RFC 4514 names. It must not
//! judge validity (that is the server's job with `now`, the CRL state and its records).

use aws_lc_rs::digest;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::Oid;
use x509_parser::x509::X509Name;

use crate::{hex, PkiError};

/// What the server needs to know about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The serial number as lowercase hex, big-endian, without leading zero bytes
    /// (so it is the same string whether or not DER needed a sign byte).
    pub serial_hex: String,
    /// Lowercase hex of SHA-256 over the certificate's DER, without colons (64 characters).
    pub fingerprint_sha256: String,
    /// The subject as an RFC 4514 string, most specific RDN first: "CN=Device-1,O=Acme,C=IL".
    pub subject: String,
    /// The issuer, in the same form as `subject`.
    pub issuer: String,
    /// Start of validity, unix seconds.
    pub not_before: i64,
    /// End of validity, unix seconds.
    pub not_after: i64,
}

/// Parses one certificate, PEM (the first "CERTIFICATE" block) or DER, and describes it. Used to
/// validate uploaded certificates; it checks structure only, not signatures or dates.
pub fn parse_certificate(pem_or_der: &[u8]) -> Result<CertificateInfo, PkiError> {
    let der = der_from_pem_or_der(pem_or_der)?;
    let certificate = parse_der(&der)?;
    Ok(describe(&certificate, &der))
}

/// Returns DER bytes from either DER input or PEM text holding a "CERTIFICATE" block.
pub(crate) fn der_from_pem_or_der(input: &[u8]) -> Result<Vec<u8>, PkiError> {
    let trimmed = input.trim_ascii_start();
    if !trimmed.starts_with(b"-----BEGIN") {
        return Ok(input.to_vec());
    }
    let blocks = pem::parse_many(trimmed).map_err(|error| PkiError::Pem(error.to_string()))?;
    blocks
        .into_iter()
        .find(|block| block.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .ok_or_else(|| PkiError::Pem("no CERTIFICATE block found".to_string()))
}

/// PEM-encodes `der` under `tag` with LF line endings (the `pem` crate defaults to CRLF), the
/// same form rcgen produces for certificates.
pub(crate) fn pem_encode(tag: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(tag, der.to_vec()), config)
}

/// Parses DER into x509-parser's view, refusing trailing bytes.
pub(crate) fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, certificate) =
        x509_parser::parse_x509_certificate(der).map_err(|error| PkiError::Certificate(error.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::Certificate("unexpected data after the certificate".to_string()));
    }
    Ok(certificate)
}

/// Builds the [`CertificateInfo`] of an already parsed certificate.
pub(crate) fn describe(certificate: &X509Certificate<'_>, der: &[u8]) -> CertificateInfo {
    CertificateInfo {
        serial_hex: serial_hex(certificate.raw_serial()),
        fingerprint_sha256: fingerprint_sha256(der),
        subject: format_name(certificate.subject()),
        issuer: format_name(certificate.issuer()),
        not_before: certificate.validity().not_before.timestamp(),
        not_after: certificate.validity().not_after.timestamp(),
    }
}

/// Lowercase hex of SHA-256 over `der`.
pub(crate) fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, der).as_ref())
}

/// Canonical serial text: lowercase hex of the big-endian magnitude without leading zero bytes.
pub(crate) fn serial_hex(raw: &[u8]) -> String {
    let mut bytes = raw;
    while let [0, rest @ ..] = bytes {
        if rest.is_empty() {
            break;
        }
        bytes = rest;
    }
    hex::encode(bytes)
}

/// Formats a name as RFC 4514 does: RDNs in reverse order of encoding, joined with ",";
/// multi-valued RDNs joined with "+"; special characters escaped. Attribute types RFC 4514 does
/// not name (plus emailAddress and serialNumber, as OpenSSL prints them) are written as
/// dotted OIDs; values that are not strings as "#" and the hex of their content octets.
pub(crate) fn format_name(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attribute| {
                    let value = match attribute.as_str() {
                        Ok(text) => escape_value(text),
                        Err(_) => format!("#{}", hex::encode(attribute.as_slice())),
                    };
                    format!("{}={}", attribute_type_name(attribute.attr_type()), value)
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

fn attribute_type_name(oid: &Oid<'_>) -> String {
    let dotted = oid.to_id_string();
    let short = match dotted.as_str() {
        "2.5.4.3" => "CN",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.6" => "C",
        "2.5.4.9" => "STREET",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "2.5.4.5" => "serialNumber",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return dotted,
    };
    short.to_string()
}

fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (index, character) in value.chars().enumerate() {
        match character {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(character);
            }
            '\0' => out.push_str("\\00"),
            ' ' if index == 0 || index == last => out.push_str("\\ "),
            '#' if index == 0 => out.push_str("\\#"),
            _ => out.push(character),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_hex_strips_sign_byte_but_keeps_zero() {
        assert_eq!(serial_hex(&[0x00, 0x80, 0x01]), "8001");
        assert_eq!(serial_hex(&[0x00]), "00");
        assert_eq!(serial_hex(&[0x7f]), "7f");
    }

    #[test]
    fn escapes_rfc4514_specials() {
        assert_eq!(escape_value("a,b+c"), "a\\,b\\+c");
        assert_eq!(escape_value(" #x "), "\\ #x\\ ");
        assert_eq!(escape_value("#a"), "\\#a");
        assert_eq!(escape_value("Device-1"), "Device-1");
    }
}
