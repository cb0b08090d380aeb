/**
 * An entry point whose configuration is wrong, or whose NATS refuses it, exits with 1 after one
 * JSON log line like every other: every configuration problem at once (for `make dev`, those of
 * every service and of the launcher), and no credentials from the URLs it was given.
 */
import { spawn, spawnSync } from 'node:child_process';
import { freePort } from '../support/nats-server';
import { ENTRY_POINTS, runEntryPoint } from '../support/entry-points';
import { eventually } from '../events/event-bus-contract';

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
      expect.stringMatching(/^TANDEM_SHUTDOWN_TIMEOUT must be at most/),
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
  it('fails start-up when that NATS has no JetStream, rather than use the in-process bus', async () => {
    const port = await freePort();
    const plain = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port)], {
      stdio: 'ignore',
    });
    try {
      let result: { code: number | string | null; output: string } | undefined;
      // Until the server listens, the launcher waits for it in the background: stopped by SIGTERM.
      await eventually(async () => {
        result = await runEntryPoint(
          DEV_MAIN,
          { NATS_URL: `nats://127.0.0.1:${port}`, TANDEM_DEV_SIMULATOR: 'false' },
          'Tandem is up',
        );
        expect(result.code).toBe(1);
      }, 20_000);
      const failure = logLines(result!.output).find((line) => line.level === 'error');
      expect(failure?.msg).toMatch(/^start-up failed/);
      expect(failure?.err?.message).toContain('JetStream is not enabled');
      expect(result!.output).not.toContain('in-process event bus');
    } finally {
      plain.kill('SIGTERM');
    }
  }, 60_000);
});
