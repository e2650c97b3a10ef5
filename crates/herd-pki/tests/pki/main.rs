//! herd-pki's one integration test binary. Everything herd-pki emits is checked here by code
//! that did not make it: x509-parser for structure, rustls-webpki for chains, client-auth EKU and
//! CRL revocation, and the `openssl` CLI (see `openssl_cli`).

mod ca;
mod crl;
mod csr;
mod issuance;
mod keys;
mod openssl_cli;
mod pkilint;
mod support;
