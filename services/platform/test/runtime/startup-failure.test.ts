/**
 * A service process whose start-up fails after it opened its embedded store (here: its gRPC port
 * is taken) closes what it opened and exits with 1, rather than exit from under a store write,
 * which can hang the process (lmdb-js's writer thread waits for the JavaScript thread).
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

async function takePort(): Promise<{ server: Server; port: number }> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return { server, port: typeof address === 'object' && address ? address.port : 0 };
}

/** Runs a compiled entry point on the embedded store and in-process bus until it exits (20 s at most). */
async function runEntryPoint(
  main: string,
  settings: NodeJS.ProcessEnv,
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
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
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
