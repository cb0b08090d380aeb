/**
 * A service process started while NATS cannot be reached does not exit: it binds, reports
 * SERVING and answers (events wait for NATS, they do not decide whether the service can answer),
 * and a signal shuts it down cleanly. When nats-server is installed, a server started later on
 * that port is connected to and gets the service's streams declared, without a restart.
 */
import { Client, credentials } from '@grpc/grpc-js';
import { spawnSync } from 'node:child_process';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  callEmpty,
  ENTRY_POINTS,
  freePort,
  pollUntil,
  shutdownSteps,
  startEntryPoint,
} from '../support/entry-points';
import { checkHealth, healthClient, type HealthClient } from '../support/health';
import { TestNatsServer } from '../support/nats-server';

const hasNatsServer = spawnSync('nats-server', ['--version']).status === 0;

/** How many streams the server holds. */
async function streamCount(url: string): Promise<number> {
  const admin = await connect({ servers: url });
  try {
    const manager = await jetstreamManager(admin);
    let count = 0;
    for await (const name of manager.streams.names()) if (name.length > 0) count++;
    return count;
  } finally {
    await admin.close();
  }
}

describe.each(ENTRY_POINTS)('$service process with NATS unreachable at start-up', (entry) => {
  let dataDir: string;
  let nats: TestNatsServer;
  let health: HealthClient | undefined;
  let client: Client | undefined;

  beforeEach(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'tandem-nats-unreachable-'));
    // Its port is reserved but nothing listens there until a test starts it.
    nats = await TestNatsServer.create();
  });

  afterEach(async () => {
    health?.close();
    client?.close();
    await nats.dispose();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('reports SERVING, answers, connects once NATS starts, and exits with 0 on SIGTERM', async () => {
    const grpcPort = await freePort();
    const running = startEntryPoint(
      entry.main,
      {
        [entry.portVariable]: String(grpcPort),
        TANDEM_DATA_DIR: dataDir,
        NATS_URL: nats.url,
      },
      90_000,
    );
    try {
      const address = `127.0.0.1:${grpcPort}`;
      health = healthClient(address);
      await pollUntil(() => checkHealth(health!, ''), 'SERVING', 30_000);
      expect(await checkHealth(health, entry.grpcService)).toBe('SERVING');
      client = new Client(address, credentials.createInsecure());
      expect((await callEmpty(client, entry.listMethod)).code).toBe(0);
      expect(running.output()).toContain('NATS unreachable');

      if (hasNatsServer) {
        nats.start();
        // The streams the service declared while NATS was down are declared once it answers.
        await pollUntil(async () => (await streamCount(nats.url)) > 0, true, 30_000);
        await pollUntil(
          () => Promise.resolve(running.output().includes('connected to NATS')),
          true,
          10_000,
        );
        expect(await checkHealth(health, '')).toBe('SERVING');
      }
    } finally {
      running.child.kill('SIGTERM');
    }
    expect(await running.exited).toBe(0);
    const output = running.output();
    expect(output).not.toContain('start-up failed');
    expect(shutdownSteps(output)).toContain('event bus');
  }, 120_000);

  it('exits with 0 on SIGTERM while NATS has never answered', async () => {
    const grpcPort = await freePort();
    const running = startEntryPoint(entry.main, {
      [entry.portVariable]: String(grpcPort),
      TANDEM_DATA_DIR: dataDir,
      NATS_URL: nats.url,
    });
    try {
      health = healthClient(`127.0.0.1:${grpcPort}`);
      await pollUntil(() => checkHealth(health!, ''), 'SERVING', 30_000);
    } finally {
      running.child.kill('SIGTERM');
    }
    expect(await running.exited).toBe(0);
    expect(shutdownSteps(running.output())).toContain('event bus');
  }, 60_000);
});
