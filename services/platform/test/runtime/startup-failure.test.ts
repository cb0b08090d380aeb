/**
 * A service process whose start-up fails after it opened its embedded store (here: its gRPC port
 * is taken) closes what it opened and exits with 1, rather than exit from under a store write,
 * which can hang the process (lmdb-js's writer thread waits for the JavaScript thread). A process
 * signalled while it starts closes what it opened and exits with 0, rather than die by the
 * signal's default action or report the interruption as a failed start-up.
 *
 * Runs the compiled entry points in `dist/`, as production does; `make test` builds them first.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const ROOT = join(__dirname, '..', '..', '..', '..');

const ENTRY_POINTS = [
  {
    service: 'assignment',
    main: 'dist/services/assignment/src/main.js',
    portVariable: 'TANDEM_ASSIGNMENT_PORT',
  },
  {
    service: 'featurestore',
    main: 'dist/services/featurestore/src/main.js',
    portVariable: 'TANDEM_FEATURESTORE_PORT',
  },
] as const;

/** The `make dev` process and, per service entry point, a line it logs during start-up. */
const STARTING = [
  { process: 'assignment', main: ENTRY_POINTS[0].main, logged: 'assignment configuration loaded' },
  { process: 'featurestore', main: ENTRY_POINTS[1].main, logged: 'feature store ready' },
  // Logged before the traffic simulator configures its experiment and view over gRPC.
  { process: 'make dev', main: 'dist/dev/main.js', logged: 'Tandem is up' },
] as const;

async function takePort(): Promise<{ server: Server; port: number }> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return { server, port: typeof address === 'object' && address ? address.port : 0 };
}

/**
 * Runs a compiled entry point on the embedded store and in-process bus until it exits (20 s at
 * most), sending it SIGTERM as soon as its output contains `signalWhen` when that is given.
 */
async function runEntryPoint(
  main: string,
  settings: NodeJS.ProcessEnv,
  signalWhen?: string,
): Promise<{ code: number | string | null; output: string }> {
  const script = join(ROOT, main);
  if (!existsSync(script)) throw new Error(`${main} is missing: run \`make build\` first`);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    TANDEM_GRPC_HOST: '127.0.0.1',
    LOG_LEVEL: 'debug',
    ...settings,
  };
  // The embedded store and the in-process bus: the case where exiting mid-write hangs.
  delete env.MONGODB_URI;
  delete env.NATS_URL;
  const child = spawn(process.execPath, [script], { cwd: ROOT, env, stdio: 'pipe' });
  let output = '';
  let signalled = false;
  const collect = (chunk: Buffer): void => {
    output += chunk.toString();
    if (signalWhen !== undefined && !signalled && output.includes(signalWhen)) {
      signalled = true;
      child.kill('SIGTERM');
    }
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  const code = await new Promise<number | string | null>((resolve) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      resolve('still running after 20 s');
    }, 20_000);
    child.once('exit', (exitCode, signal) => {
      clearTimeout(timer);
      resolve(exitCode ?? signal);
    });
  });
  return { code, output };
}

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
