#!/usr/bin/env node
// The peer of herd's certificate phase: issues device certificates the way the seed's NestJS
// DeviceCertificatesService does, so herd-bench can compare the two stacks on the same machine in
// the same run.
//
// Per certificate, as the seed's issueCertificate():
//   - an RSA-2048 key pair from Node's crypto.generateKeyPairSync,
//   - an X.509 v3 certificate built with node-forge (subject CN=Device-<id>,O=BTManagement,C=IL,
//     365 days), signed by the CA with SHA-256,
//   - key and certificate PEM-encoded and written to certificates/devices/private/<id>-key.pem
//     (mode 0600) and certificates/devices/public/<id>-cert.pem, plus the SHA-256 fingerprint the
//     seed stores in its DeviceCertificate record.
// The CA (RSA-2048, self-signed, like the seed's initializeCA) is created once, before timing.
// The database write of the seed's record is not reproduced; herd's figure includes its own.
//
// Usage: node issue-cert.js [--seconds S] [--count N]
// Stops after S seconds or N certificates, whichever comes first, and prints one JSON line:
//   {"count": …, "seconds": …, "perSecond": …, "p50ms": …, "p99ms": …, "node": "v20…", "forge": "…"}
// It runs on one thread: the figure is per core.

'use strict';

const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const forge = require('node-forge');

const VALIDITY_DAYS = 365;
const KEY_SIZE = 2048;

function parseArgs(argv) {
  const options = { seconds: 10, count: Number.POSITIVE_INFINITY };
  for (let i = 2; i < argv.length; i += 2) {
    const value = Number(argv[i + 1]);
    if (!Number.isFinite(value) || value <= 0) {
      throw new Error(`${argv[i]} needs a positive number, got ${argv[i + 1]}`);
    }
    if (argv[i] === '--seconds') options.seconds = value;
    else if (argv[i] === '--count') options.count = value;
    else throw new Error(`unknown flag ${argv[i]}`);
  }
  return options;
}

function generateRsaKeyPair() {
  return crypto.generateKeyPairSync('rsa', {
    modulusLength: KEY_SIZE,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
}

function randomSerial() {
  // A positive 16-byte serial, as forge expects hex without a leading sign bit.
  const bytes = crypto.randomBytes(16);
  bytes[0] &= 0x7f;
  return bytes.toString('hex');
}

function createCa() {
  const { publicKey, privateKey } = generateRsaKeyPair();
  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey);
  cert.serialNumber = randomSerial();
  cert.validity.notBefore = new Date();
  cert.validity.notAfter = new Date();
  cert.validity.notAfter.setFullYear(cert.validity.notBefore.getFullYear() + 10);
  const attrs = [
    { name: 'commonName', value: 'BTManagement Device CA' },
    { name: 'organizationName', value: 'BTManagement' },
    { name: 'countryName', value: 'IL' },
  ];
  cert.setSubject(attrs);
  cert.setIssuer(attrs);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true },
  ]);
  const forgeKey = forge.pki.privateKeyFromPem(privateKey);
  cert.sign(forgeKey, forge.md.sha256.create());
  return { cert, key: forgeKey };
}

function issueDeviceCertificate(ca, directory) {
  const deviceId = crypto.randomUUID();
  const { publicKey, privateKey } = generateRsaKeyPair();

  const cert = forge.pki.createCertificate();
  cert.publicKey = forge.pki.publicKeyFromPem(publicKey);
  cert.serialNumber = randomSerial();
  cert.validity.notBefore = new Date();
  cert.validity.notAfter = new Date(Date.now() + VALIDITY_DAYS * 24 * 60 * 60 * 1000);
  cert.setSubject([
    { name: 'commonName', value: `Device-${deviceId}` },
    { name: 'organizationName', value: 'BTManagement' },
    { name: 'countryName', value: 'IL' },
  ]);
  cert.setIssuer(ca.cert.subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
    { name: 'extKeyUsage', clientAuth: true },
  ]);
  cert.sign(ca.key, forge.md.sha256.create());

  const certificatePem = forge.pki.certificateToPem(cert);
  const der = forge.asn1.toDer(forge.pki.certificateToAsn1(cert)).getBytes();
  const fingerprint = forge.md.sha256.create().update(der).digest().toHex();

  fs.writeFileSync(path.join(directory, 'private', `${deviceId}-key.pem`), privateKey, { mode: 0o600 });
  fs.writeFileSync(path.join(directory, 'public', `${deviceId}-cert.pem`), certificatePem);
  return fingerprint;
}

function percentile(sortedMs, fraction) {
  if (sortedMs.length === 0) return null;
  const index = Math.min(sortedMs.length - 1, Math.ceil(fraction * sortedMs.length) - 1);
  return sortedMs[Math.max(0, index)];
}

function main() {
  const options = parseArgs(process.argv);
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'herd-bench-node-peer-'));
  try {
    fs.mkdirSync(path.join(directory, 'private'));
    fs.mkdirSync(path.join(directory, 'public'));
    const ca = createCa();

    const latenciesMs = [];
    const started = process.hrtime.bigint();
    const deadline = started + BigInt(Math.round(options.seconds * 1e9));
    while (latenciesMs.length < options.count && process.hrtime.bigint() < deadline) {
      const before = process.hrtime.bigint();
      issueDeviceCertificate(ca, directory);
      latenciesMs.push(Number(process.hrtime.bigint() - before) / 1e6);
    }
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;

    latenciesMs.sort((a, b) => a - b);
    process.stdout.write(
      JSON.stringify({
        count: latenciesMs.length,
        seconds,
        perSecond: latenciesMs.length / seconds,
        p50ms: percentile(latenciesMs, 0.5),
        p99ms: percentile(latenciesMs, 0.99),
        node: process.version,
        forge: require('node-forge/package.json').version,
      }) + '\n',
    );
  } finally {
    fs.rmSync(directory, { recursive: true, force: true });
  }
}

main();
