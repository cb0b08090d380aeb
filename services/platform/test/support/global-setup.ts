/**
 * Jest global set-up: makes a real NATS JetStream server available to integration tests.
 * - `NATS_URL` set (CI starts nats-server itself): use it.
 * - otherwise, when `nats-server` is on PATH, start one on a free loopback port with a temporary
 *   store directory, and stop it in global-teardown.
 * * - otherwise NATS tests are skipped with a message (or fail when TANDEM_REQUIRE_NATS=1).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from './nats-server';

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
