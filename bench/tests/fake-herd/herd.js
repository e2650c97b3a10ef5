#!/usr/bin/env node
// A stand-in for the herd binary, for herd-bench's own tests only: it speaks just enough of the
// API contract (DESIGN.md) for every phase of the harness to run end to end, with no real work
// behind it. FAKE_HERD_ROUTES=minimal serves only /readyz, so every phase must report n/a.
'use strict';

const http = require('http');
const crypto = require('crypto');

if (process.argv[2] === '--version') {
  process.stdout.write('herd-fake 0.0.0\n');
  process.exit(0);
}
if (process.argv[2] !== 'serve') {
  process.stderr.write('usage: herd.js serve\n');
  process.exit(2);
}

const minimal = process.env.FAKE_HERD_ROUTES === 'minimal';
const admin = process.env.HERD_BOOTSTRAP_TOKEN;
const [host, port] = process.env.HERD_LISTEN.split(':');
const devicesByToken = new Map();
const online = new Set();
let samples = 0;

function send(res, status, body) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function bearer(req) {
  return (req.headers.authorization || '').replace(/^Bearer /, '');
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const raw = Buffer.concat(chunks).toString();
    const body = raw ? JSON.parse(raw) : undefined;
    const route = `${req.method} ${req.url}`;
    if (route === 'GET /readyz') return send(res, 200, { status: 'ready' });
    if (minimal) return send(res, 404);
    if (route === 'POST /bench/echo') return send(res, 200, body);
    if (route === 'POST /enrollment-tokens') {
      if (bearer(req) !== admin) return send(res, 401, { title: 'Unauthorized' });
      return send(res, 201, { enrollmentToken: { id: crypto.randomUUID() }, secret: 'herd_et_fake' });
    }
    if (route === 'POST /devices/auto-register') {
      const device = { id: crypto.randomUUID(), serialNumber: body.serialNumber };
      const token = `herd_dt_${crypto.randomBytes(12).toString('hex')}`;
      devicesByToken.set(token, device);
      return send(res, 201, { device, deviceToken: token });
    }
    const device = devicesByToken.get(bearer(req));
    if (route === 'POST /devices/connect') {
      if (!device) return send(res, 401, { title: 'Unauthorized' });
      online.add(device.id);
      return send(res, 200, { device, serverTime: new Date().toISOString() });
    }
    if (route === 'POST /devices/metrics') {
      if (!device) return send(res, 401, { title: 'Unauthorized' });
      samples += body.samples ? body.samples.length : 1;
      return send(res, 201, { accepted: body.samples ? body.samples.length : 1 });
    }
    if (route === 'GET /devices/stats/overview') {
      return send(res, 200, { total: devicesByToken.size, active: online.size, samples });
    }
    if (req.method === 'POST' && /^\/devices\/[^/]+\/certificates$/.test(req.url)) {
      if (bearer(req) !== admin) return send(res, 401, { title: 'Unauthorized' });
      return send(res, 201, { certificate: { id: crypto.randomUUID() }, csr: Boolean(body && body.csr) });
    }
    if (route === 'POST /admin/presence/sweep') {
      const marked = online.size;
      online.clear();
      return send(res, 200, { markedOffline: marked });
    }
    return send(res, 404);
  });
});

server.keepAliveTimeout = 60000;
server.listen(Number(port), host);
process.on('SIGTERM', () => server.close(() => process.exit(0)));
