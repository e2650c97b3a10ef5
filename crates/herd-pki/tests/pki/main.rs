//! herd-pki's one integration test binary. Everything herd-pki emits is checked here by code
//! that did not make it: x509-parser for structure, rustls-webpki for chains, client-auth EKU and
//! CRL revocation, and the `openssl` CLI (see `openssl_cli`).
// Test and example code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used)]

mod ca;
mod crl;
mod csr;
mod issuance;
mod keys;
mod openssl_cli;
mod pkilint;
mod support;
