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
// Remote commands: per device id, its executions ({id, state}) in order; per command id, the
// device ids it went to; per device id, the answer function of a poll that waits.
const executionsByDevice = new Map();
const commands = new Map();
const waitingPolls = new Map();
// Packages: per id, the artifact's bytes and digest.
const packages = new Map();

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
    const route = `${req.method} ${req.url}`;
    if (route === 'GET /readyz') return send(res, 200, { status: 'ready' });
    if (minimal) return send(res, 404);
    // An upload's body is the artifact itself, not JSON.
    if (req.method === 'POST' && req.url.startsWith('/packages?')) {
      if (bearer(req) !== admin) return send(res, 401, { title: 'Unauthorized' });
      const bytes = Buffer.concat(chunks);
      const id = crypto.randomUUID();
      const sha256 = crypto.createHash('sha256').update(bytes).digest('hex');
      packages.set(id, { bytes, sha256 });
      return send(res, 201, { id, sha256, size: bytes.length, downloadUrl: `/packages/${id}/download` });
    }
    const raw = Buffer.concat(chunks).toString();
    const body = raw ? JSON.parse(raw) : undefined;
    if (route === 'GET /packages?limit=1') {
      if (bearer(req) !== admin) return send(res, 401, { title: 'Unauthorized' });
      return send(res, 200, { items: [] });
    }
    const downloadMatch = /^\/packages\/([^/]+)\/download$/.exec(req.url);
    if (req.method === 'GET' && downloadMatch) {
      if (bearer(req) !== admin) return send(res, 401, { title: 'Unauthorized' });
      const pkg = packages.get(downloadMatch[1]);
      if (!pkg) return send(res, 404, { title: 'Not Found' });
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': pkg.bytes.length });
      return res.end(pkg.bytes);
    }
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
    if (route === 'GET /commands?limit=1') {
      if (bearer(req) !== admin) return send(res, 401, { title: 'Unauthorized' });
      return send(res, 200, { items: [] });
    }
    if (route === 'POST /commands') {
      if (bearer(req) !== admin) return send(res, 401, { title: 'Unauthorized' });
      const all = [...devicesByToken.values()].map((d) => d.id);
      const targets = body.target.all ? all : body.target.deviceIds;
      const id = crypto.randomUUID();
      commands.set(id, targets);
      for (const deviceId of targets) {
        if (!executionsByDevice.has(deviceId)) executionsByDevice.set(deviceId, []);
        executionsByDevice.get(deviceId).push({ id, type: body.type, state: 'queued' });
        const wake = waitingPolls.get(deviceId);
        if (wake) wake();
      }
      return send(res, 201, { id, total: targets.length, counts: { queued: targets.length } });
    }
    const commandMatch = /^\/commands\/([^/?]+)$/.exec(req.url);
    if (req.method === 'GET' && commandMatch) {
      const targets = commands.get(commandMatch[1]);
      if (!targets) return send(res, 404, { title: 'Not Found' });
      const counts = { queued: 0, delivered: 0, running: 0, succeeded: 0, failed: 0, expired: 0, cancelled: 0 };
      for (const deviceId of targets) {
        const execution = executionsByDevice.get(deviceId).find((e) => e.id === commandMatch[1]);
        counts[execution.state] += 1;
      }
      return send(res, 200, { id: commandMatch[1], counts, done: counts.queued + counts.delivered === 0 });
    }
    const pollMatch = /^\/devices\/self\/commands\?wait=(\d+)s&limit=\d+$/.exec(req.url);
    if (req.method === 'GET' && pollMatch) {
      if (!device) return send(res, 401, { title: 'Unauthorized' });
      const answer = () => {
        const queued = (executionsByDevice.get(device.id) || []).filter((e) => e.state === 'queued');
        if (queued.length === 0) return false;
        waitingPolls.delete(device.id);
        clearTimeout(timer);
        for (const execution of queued) execution.state = 'delivered';
        send(res, 200, { items: queued.map(({ id, type, state }) => ({ id, type, payload: {}, state })) });
        return true;
      };
      let timer;
      if (answer()) return undefined;
      timer = setTimeout(() => {
        waitingPolls.delete(device.id);
        send(res, 200, { items: [] });
      }, Number(pollMatch[1]) * 1000);
      waitingPolls.set(device.id, answer);
      return undefined;
    }
    const resultMatch = /^\/devices\/self\/commands\/([^/]+)\/result$/.exec(req.url);
    if (req.method === 'POST' && resultMatch) {
      if (!device) return send(res, 401, { title: 'Unauthorized' });
      const execution = (executionsByDevice.get(device.id) || []).find((e) => e.id === resultMatch[1]);
      if (!execution) return send(res, 404, { title: 'Not Found' });
      execution.state = body.status;
      return send(res, 200, { id: execution.id, state: execution.state });
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
