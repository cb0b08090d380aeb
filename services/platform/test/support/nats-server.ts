/**
 * A nats-server a test owns, so it can stop and restart it (outage tests), on a fixed loopback
 * port and JetStream store so streams and durables survive the restart (unless the test clears
 * the store).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A loopback port nothing listens on right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => {
        resolve(port);
      });
    });
  });
}

/** Resolves once something accepts connections on the loopback `port`; throws after `timeoutMs`. */
export async function waitForPort(port: number, timeoutMs: number): Promise<void> {
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
    if (Date.now() > deadline) throw new Error(`nothing listens on port ${port}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export class TestNatsServer {
  private process: ChildProcess | undefined;

  private constructor(
    readonly port: number,
    private readonly storeDir: string,
  ) {}

  /** Reserves a port and a store directory; call `start()` to run the server. */
  static async create(): Promise<TestNatsServer> {
    return new TestNatsServer(await freePort(), mkdtempSync(join(tmpdir(), 'tandem-test-nats-')));
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  start(): void {
    this.process = spawn(
      'nats-server',
      ['-js', '-a', '127.0.0.1', '-p', String(this.port), '-sd', this.storeDir],
      { stdio: 'ignore' },
    );
  }

  async stop(): Promise<void> {
    const running = this.process;
    this.process = undefined;
    if (!running || running.exitCode !== null || running.killed) return;
    await new Promise<void>((resolve) => {
      running.once('exit', () => {
        resolve();
      });
      running.kill('SIGTERM');
    });
  }

  /**
   * Empties the store of the stopped server: started again, it has no streams or durables, as a
   * server restarted on a new volume.
   */
  clearStore(): void {
    if (this.process) throw new Error('stop the server before clearing its store');
    rmSync(this.storeDir, { recursive: true, force: true });
    mkdirSync(this.storeDir);
  }

  /** Stops the server and removes its store. */
  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.storeDir, { recursive: true, force: true });
  }
}
