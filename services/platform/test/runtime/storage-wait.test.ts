/**
 * A service process started while MongoDB cannot be reached does not exit and does not serve
 * nothing silently: it binds, reports NOT_SERVING, answers calls with UNAVAILABLE, and keeps
 * trying; once MongoDB answers it starts and reports SERVING. A signal while it waits shuts it
 * down cleanly.
 *
 * The unreachable case needs no MongoDB. The recovery case needs one (`MONGODB_URI`): the process
 * is pointed at a local port where a proxy to that server starts listening only later.
 */
import { Client, credentials } from '@grpc/grpc-js';
import { UnavailableError } from '../../src/errors';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  callEmpty,
  ENTRY_POINTS,
  freePort,
  pollUntil,
  runEntryPoint,
  shutdownSteps,
  startEntryPoint,
} from '../support/entry-points';
import { checkHealth, healthClient, type HealthClient } from '../support/health';

const MONGODB_URI = process.env.MONGODB_URI;
if (!MONGODB_URI) {
  console.log('SKIPPED: MongoDB recovery at start-up (set MONGODB_URI to run it)');
}

/** A MongoDB URI for a local port, failing server selection quickly while nothing answers. */
const mongoAt = (port: number): string =>
  `mongodb://127.0.0.1:${port}/?directConnection=true&serverSelectionTimeoutMS=300`;

/** A TCP proxy from a local port to `target` (host:port), listening only once `start` is called. */
function laterProxy(port: number, target: { host: string; port: number }) {
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  return {
    start: () =>
      new Promise<void>((resolve) => {
        server = createServer((inbound) => {
          const outbound = createConnection(target.port, target.host);
          for (const socket of [inbound, outbound]) {
            sockets.add(socket);
            socket.on('error', () => undefined);
            socket.on('close', () => sockets.delete(socket));
          }
          inbound.pipe(outbound).pipe(inbound);
        });
        server.listen(port, '127.0.0.1', resolve);
      }),
    stop: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        if (server)
          server.close(() => {
            resolve();
          });
        else resolve();
      }),
  };
}

describe.each(ENTRY_POINTS)('$service process with storage unreachable at start-up', (entry) => {
  let dataDir: string;
  let health: HealthClient | undefined;
  let client: Client | undefined;

  beforeEach(() => {
    dataDir = mkdtempSync(join(tmpdir(), 'tandem-storage-wait-'));
  });

  afterEach(() => {
    health?.close();
    client?.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('reports NOT_SERVING, answers UNAVAILABLE, and exits with 0 on SIGTERM, flushing telemetry', async () => {
    const grpcPort = await freePort();
    const running = startEntryPoint(entry.main, {
      [entry.portVariable]: String(grpcPort),
      TANDEM_DATA_DIR: dataDir,
      MONGODB_URI: mongoAt(await freePort()),
    });
    try {
      const address = `127.0.0.1:${grpcPort}`;
      health = healthClient(address);
      const healthOf = (service: string) => () => checkHealth(health!, service);
      await pollUntil(healthOf(''), 'NOT_SERVING', 15_000);
      expect(await checkHealth(health, entry.grpcService)).toBe('NOT_SERVING');

      client = new Client(address, credentials.createInsecure());
      const answer = await callEmpty(client, entry.listMethod);
      expect(answer.code).toBe(14); // UNAVAILABLE
      expect(answer.details).toContain('storage cannot be reached');
      // With the reason, and when to try again: the next attempt to reach storage.
      expect(answer.error?.reason).toBe('STORAGE_UNAVAILABLE');
      const retryDelayMs = answer.error instanceof UnavailableError && answer.error.retryDelayMs;
      expect(retryDelayMs).toBeGreaterThan(0);
      expect(running.output()).toContain('storage unreachable: NOT_SERVING until it answers');
    } finally {
      running.child.kill('SIGTERM');
    }
    expect(await running.exited).toBe(0);
    expect(running.output()).not.toContain('start-up failed');
    // Spans recorded while it waited (none here, but the step is what would export them).
    expect(shutdownSteps(running.output())).toContain('telemetry');
  }, 30_000);

  it('exits with 0 on a SIGTERM during its first attempt to reach storage', async () => {
    // Nothing answers, and the first attempt waits 20 s for a server: the signal comes during it.
    const unreachable = `mongodb://127.0.0.1:${await freePort()}/?directConnection=true&serverSelectionTimeoutMS=20000`;
    const { code, output } = await runEntryPoint(
      entry.main,
      {
        [entry.portVariable]: String(await freePort()),
        TANDEM_DATA_DIR: dataDir,
        MONGODB_URI: unreachable,
      },
      'NATS_URL is not set',
    );
    expect(code).toBe(0);
    expect(output).toContain('shutting down');
    expect(output).not.toContain('storage unreachable');
    expect(shutdownSteps(output)).toContain('telemetry');
  }, 30_000);

  (MONGODB_URI ? it : it.skip)(
    'starts and reports SERVING once MongoDB answers',
    async () => {
      const target = new URL(MONGODB_URI!.replace(/^mongodb:\/\//, 'http://'));
      const mongoPort = await freePort();
      const proxy = laterProxy(mongoPort, {
        host: target.hostname,
        port: Number(target.port || 27017),
      });
      const grpcPort = await freePort();
      const running = startEntryPoint(
        entry.main,
        {
          [entry.portVariable]: String(grpcPort),
          TANDEM_DATA_DIR: dataDir,
          MONGODB_URI: mongoAt(mongoPort),
        },
        60_000,
      );
      try {
        const address = `127.0.0.1:${grpcPort}`;
        health = healthClient(address);
        await pollUntil(() => checkHealth(health!, ''), 'NOT_SERVING', 15_000);

        await proxy.start();
        await pollUntil(() => checkHealth(health!, ''), 'SERVING', 30_000);
        expect(await checkHealth(health, entry.grpcService)).toBe('SERVING');
        client = new Client(address, credentials.createInsecure());
        expect(await callEmpty(client, entry.listMethod)).toEqual({ code: 0, details: '' });
      } finally {
        running.child.kill('SIGTERM');
        await running.exited;
        await proxy.stop();
      }
      expect(await running.exited).toBe(0);
    },
    60_000,
  );
});
