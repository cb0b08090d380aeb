/**
 * A service process whose start-up fails after it opened its embedded store (here: its gRPC port
 * is taken) closes what it opened and exits with 1, rather than exit from under a store write,
 * which can hang the process (lmdb-js's writer thread waits for the JavaScript thread). A process
 * signalled while it starts closes what it opened and exits with 0, rather than die by the
 * signal's default action or report the interruption as a failed start-up.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ENTRY_POINTS, runEntryPoint, takePort } from '../support/entry-points';

/** The `make dev` process and, per service entry point, a line it logs during start-up. */
const STARTING = [
  { process: 'assignment', main: ENTRY_POINTS[0].main, logged: 'assignment configuration loaded' },
  { process: 'featurestore', main: ENTRY_POINTS[1].main, logged: 'feature store ready' },
  // Logged before the traffic simulator configures its experiment and view over gRPC.
  { process: 'make dev', main: 'dist/dev/main.js', logged: 'Tandem is up' },
] as const;

describe.each(ENTRY_POINTS)('$service process start-up failure', ({ main, portVariable }) => {
  let dataDir: string;

  beforeEach(() => {
    dataDir = mkdtempSync(join(tmpdir(), 'tandem-startup-'));
  });

  afterEach(() => {
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('closes what it opened and exits with 1 when its port is taken', async () => {
    const { server, port } = await takePort();
    try {
      const { code, output } = await runEntryPoint(main, {
        [portVariable]: String(port),
        TANDEM_DATA_DIR: dataDir,
      });

      expect(code).toBe(1);
      expect(output).toContain('start-up failed; closing what was opened');
      expect(output).toMatch(/"step":"storage".*"msg":"shutdown step done"/);
    } finally {
      server.close();
    }
  }, 30_000);

  it('exits with 1 before opening anything when a TLS file is missing', async () => {
    const { code, output } = await runEntryPoint(main, {
      [portVariable]: '0',
      TANDEM_DATA_DIR: dataDir,
      TANDEM_TLS_CERT_FILE: join(dataDir, 'missing-cert.pem'),
      TANDEM_TLS_KEY_FILE: join(dataDir, 'missing-key.pem'),
    });

    expect(code).toBe(1);
    expect(output).toContain('missing-cert.pem');
    expect(output).not.toContain('dependencies connected');
  }, 30_000);
});

describe.each(STARTING)('$process signalled during start-up', ({ main, logged }) => {
  let dataDir: string;

  beforeEach(() => {
    dataDir = mkdtempSync(join(tmpdir(), 'tandem-startup-'));
  });

  afterEach(() => {
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('closes what it opened and exits with 0, without reporting a failed start-up', async () => {
    const { code, output } = await runEntryPoint(
      main,
      {
        TANDEM_ASSIGNMENT_PORT: '0',
        TANDEM_FEATURESTORE_PORT: '0',
        TANDEM_DATA_DIR: dataDir,
        // `make dev` tries this NATS first; nothing listens on port 1, so it uses the in-process bus.
        TANDEM_DEV_NATS_URL: 'nats://127.0.0.1:1',
      },
      logged,
    );

    expect(code).toBe(0);
    expect(output).toContain('shutting down');
    expect(output).not.toContain('start-up failed');
    expect(output).toMatch(/"step":"storage".*"msg":"shutdown step done"/);
  }, 30_000);
});
