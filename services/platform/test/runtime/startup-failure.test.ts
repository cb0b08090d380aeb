/**
 * A service process whose start-up fails after it opened its embedded store (here: its gRPC port
 * is taken) closes what it opened and exits with 1, rather than exit from under a store write,
 * which can hang the process (lmdb-js's writer thread waits for the JavaScript thread). A process
 * signalled while it starts closes what it opened and exits with 0, rather than die by the
 * signal's default action or report the interruption as a failed start-up.
 *
 * One whose configuration is wrong, or whose NATS refuses it, exits with 1 after one JSON log line
 * like every other: every configuration problem at once (for `make dev`, those of every service
 * and of the launcher), and no credentials from the URLs it was given.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ENTRY_POINTS, freePort, runEntryPoint, takePort } from '../support/entry-points';
import { waitForPort } from '../support/nats-server';

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

const DEV_MAIN = 'dist/dev/main.js';
const hasNatsServer = spawnSync('nats-server', ['--version']).status === 0;

interface LogLine {
  readonly level?: string;
  readonly msg?: string;
  readonly problems?: readonly string[];
  readonly err?: { readonly message?: string };
}

/** The output's lines, each of which must be a JSON log line. */
function logLines(output: string): LogLine[] {
  return output
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as LogLine);
}

const BAD_PLATFORM_SETTINGS = {
  NATS_URL: 'nats://alice:pa55word@127.0.0.1:port',
  MONGODB_URI: 'mongodb://bob:pa55word@db:port/',
  TANDEM_TLS_CA_FILE: '/nonexistent/ca.pem',
  TANDEM_SHUTDOWN_TIMEOUT: '30d',
};

describe.each(ENTRY_POINTS)('$service process with a wrong configuration', (entry) => {
  it('exits with 1 after one JSON line naming every problem, without credentials', async () => {
    const { code, output } = await runEntryPoint(entry.main, {
      ...BAD_PLATFORM_SETTINGS,
      [entry.portVariable]: 'eighty',
    });
    expect(code).toBe(1);
    const lines = logLines(output);
    const fatal = lines.find((line) => line.level === 'fatal');
    expect(fatal?.msg).toBe('invalid configuration');
    expect(fatal?.problems).toEqual([
      expect.stringMatching(/^TANDEM_TLS_CA_FILE needs/),
      expect.stringMatching(/^TANDEM_TLS_CA_FILE: cannot read/),
      expect.stringMatching(/^NATS_URL: "nats:\/\/\*\*\*@127.0.0.1:port" is not a server URL/),
      expect.stringMatching(/^MONGODB_URI is not a MongoDB connection string/),
      expect.stringMatching(new RegExp(`^${entry.portVariable} must be an integer`)),
      expect.stringMatching(/^TANDEM_SHUTDOWN_TIMEOUT must be at most 1h, got "30d"/),
    ]);
    expect(output).not.toContain('pa55word');
  }, 30_000);
});

describe('make dev with a wrong configuration', () => {
  it('names the problems of every service and of the launcher at once', async () => {
    const { code, output } = await runEntryPoint(DEV_MAIN, {
      LOG_LEVEL: 'loud',
      TANDEM_FEATURESTORE_PORT: 'x',
      TANDEM_DEV_SIMULATOR: 'maybe',
    });
    expect(code).toBe(1);
    const fatal = logLines(output).find((line) => line.level === 'fatal');
    expect(fatal?.msg).toBe('invalid configuration');
    expect(fatal?.problems).toEqual([
      expect.stringMatching(/^LOG_LEVEL must be one of/),
      expect.stringMatching(/^TANDEM_FEATURESTORE_PORT must be an integer/),
      expect.stringMatching(/^TANDEM_DEV_SIMULATOR must be true or false/),
    ]);
  }, 30_000);
});

(hasNatsServer ? describe : describe.skip)('make dev with NATS_URL set', () => {
  let dataDir: string;

  beforeEach(() => {
    dataDir = mkdtempSync(join(tmpdir(), 'tandem-startup-'));
  });

  afterEach(() => {
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('fails start-up when that NATS has no JetStream, rather than use the in-process bus', async () => {
    const port = await freePort();
    const plain = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port)], {
      stdio: 'ignore',
    });
    try {
      await waitForPort(port, 10_000);
      const { code, output } = await runEntryPoint(
        DEV_MAIN,
        {
          NATS_URL: `nats://127.0.0.1:${port}`,
          TANDEM_ASSIGNMENT_PORT: '0',
          TANDEM_FEATURESTORE_PORT: '0',
          TANDEM_DATA_DIR: dataDir,
          TANDEM_DEV_SIMULATOR: 'false',
        },
        'Tandem is up',
      );
      expect(code).toBe(1);
      const failure = logLines(output).find((line) => line.level === 'error');
      expect(failure?.msg).toMatch(/^start-up failed/);
      expect(failure?.err?.message).toContain('JetStream is not enabled');
      expect(output).not.toContain('in-process event bus');
    } finally {
      plain.kill('SIGTERM');
    }
  }, 60_000);
});
