/**
 * A SIGTERM while a service process is still connecting to NATS at start-up shuts it down with
 * exit code 0 (Node's default action would kill it), flushing telemetry.
 *
 * "NATS" here is a local socket that accepts connections and never answers, so the connect stays
 * pending; no NATS server is needed.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ENTRY_POINTS, freePort, shutdownSteps, startEntryPoint } from '../support/entry-points';

/** A listener that accepts connections, says nothing, and reports each connection. */
async function silentServer(): Promise<{
  port: number;
  connected: Promise<void>;
  close(): Promise<void>;
}> {
  const sockets = new Set<Socket>();
  let onConnection: () => void = () => undefined;
  const connected = new Promise<void>((resolve) => {
    onConnection = resolve;
  });
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
    onConnection();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return {
    port: typeof address === 'object' && address ? address.port : 0,
    connected,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => {
          resolve();
        });
      }),
  };
}

describe.each(ENTRY_POINTS)('$service process signalled while connecting to NATS', (entry) => {
  let dataDir: string;
  let nats: Awaited<ReturnType<typeof silentServer>>;

  beforeEach(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'tandem-nats-connect-'));
    nats = await silentServer();
  });

  afterEach(async () => {
    await nats.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('exits with 0 on SIGTERM, flushing telemetry', async () => {
    const running = startEntryPoint(entry.main, {
      [entry.portVariable]: String(await freePort()),
      TANDEM_DATA_DIR: dataDir,
      NATS_URL: `nats://127.0.0.1:${nats.port}`,
    });
    // Exited first (a code) when it never got as far as connecting.
    expect(await Promise.race([nats.connected.then(() => 'connecting'), running.exited])).toBe(
      'connecting',
    );
    running.child.kill('SIGTERM');

    expect(await running.exited).toBe(0);
    const output = running.output();
    expect(output).toContain('shutting down');
    expect(output).not.toContain('start-up failed');
    expect(output).not.toContain('dependencies connected');
    expect(shutdownSteps(output)).toContain('telemetry');
  }, 30_000);
});
