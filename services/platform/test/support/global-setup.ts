/**
 * Jest global set-up: makes a real NATS JetStream server available to integration tests.
 * - `NATS_URL` set (CI starts nats-server itself): use it.
 * - otherwise, when `nats-server` is on PATH, start one on a free loopback port with a temporary
 *   store directory, and stop it in global-teardown.
 * - otherwise NATS tests are skipped with a message (or fail when TANDEM_REQUIRE_INTEGRATION=1).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './nats-server';

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => {
        resolve(false);
      });
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nats-server did not listen on ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export default async function globalSetup(): Promise<void> {
  if (process.env.NATS_URL) return;
  if (spawnSync('nats-server', ['--version']).status !== 0) return;
  const port = await freePort();
  const storeDir = mkdtempSync(join(tmpdir(), 'tandem-nats-'));
  const child = spawn(
    'nats-server',
    ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', storeDir],
    {
      stdio: 'ignore',
      detached: false,
    },
  );
  await waitForPort(port, 10_000);
  process.env.NATS_URL = `nats://127.0.0.1:${port}`;
  process.env.TANDEM_TEST_NATS_PID = String(child.pid);
}
