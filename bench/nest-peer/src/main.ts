// The seed's POST /devices/connect as a standalone NestJS server, run by herd-bench beside herd.
//
// Node runs JavaScript on one thread, so the primary process forks PEER_WORKERS workers (default:
// 2, the benchmark machine's cores, which herd uses too) that share one listening socket through
// node:cluster. The primary prints `ready <port>` once every worker listens. It stops the workers
// on SIGTERM/SIGINT, and a worker whose primary is gone exits (its IPC channel disconnects).
//
// Environment: DATABASE_URL (required), PORT (required; the server binds 127.0.0.1 only),
// PEER_WORKERS (optional).
import 'reflect-metadata';
import cluster from 'node:cluster';
import { ValidationPipe } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { AppModule } from './app.module';

const HOST = '127.0.0.1';

function port(): number {
  const value = Number(process.env.PORT);
  if (!Number.isInteger(value) || value <= 0 || value > 65535) {
    throw new Error(`PORT must be a TCP port, got ${process.env.PORT}`);
  }
  return value;
}

function workerCount(): number {
  const value = Number(process.env.PEER_WORKERS ?? '2');
  if (!Number.isInteger(value) || value < 1) {
    throw new Error(`PEER_WORKERS must be a positive integer, got ${process.env.PEER_WORKERS}`);
  }
  return value;
}

function runPrimary(): void {
  const listenPort = port();
  const workers = workerCount();
  let listening = 0;
  let stopping = false;
  cluster.on('listening', () => {
    listening += 1;
    if (listening === workers) {
      console.log(`ready ${listenPort}`);
    }
  });
  cluster.on('exit', (worker, code, signal) => {
    if (!stopping) {
      console.error(`worker ${worker.process.pid} exited (${signal ?? code}); stopping`);
      stop(1);
    }
  });
  const stop = (code: number) => {
    stopping = true;
    for (const worker of Object.values(cluster.workers ?? {})) {
      worker?.kill('SIGTERM');
    }
    setTimeout(() => process.exit(code), 2000).unref();
    cluster.disconnect(() => process.exit(code));
  };
  process.on('SIGTERM', () => stop(0));
  process.on('SIGINT', () => stop(0));
  for (let i = 0; i < workers; i += 1) {
    cluster.fork();
  }
}

async function runWorker(): Promise<void> {
  process.on('disconnect', () => process.exit(0));
  const app = await NestFactory.create(AppModule, { logger: ['error', 'warn'] });
  app.useGlobalPipes(new ValidationPipe({ whitelist: true, forbidNonWhitelisted: true, transform: true }));
  app.enableShutdownHooks();
  await app.listen(port(), HOST);
}

if (cluster.isPrimary) {
  runPrimary();
} else {
  runWorker().catch((error) => {
    console.error(error);
    process.exit(1);
  });
}
