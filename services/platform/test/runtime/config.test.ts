import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ConfigError,
  EnvReader,
  MAX_TIMER_MS,
  parseDurationMs,
  readPlatformConfig,
} from '../../src/config';

/** The problems `finish()` reports for `env` read as the platform's settings. */
function platformProblems(env: Record<string, string>): readonly string[] {
  const reader = new EnvReader(env);
  readPlatformConfig(reader, 'assignment', 50051);
  try {
    reader.finish();
    return [];
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    return error.problems;
  }
}

describe('EnvReader', () => {
  it('returns documented defaults when variables are unset or blank', () => {
    const env = new EnvReader({ BLANK: '  ' });
    expect(env.integer('PORT', { default: 50051, description: 'port' })).toBe(50051);
    expect(env.string('BLANK', { default: 'x', description: 'blank means unset' })).toBe('x');
    expect(env.durationMs('TIMEOUT', { default: 10_000, description: 'timeout' })).toBe(10_000);
    env.finish();
    expect(env.describe().map((d) => [d.name, d.default])).toEqual([
      ['PORT', '50051'],
      ['BLANK', 'x'],
      ['TIMEOUT', '10s'],
    ]);
  });

  it('reports every malformed variable at once, not only the first', () => {
    const env = new EnvReader({
      PORT: 'eighty',
      RATIO: '2',
      FLAG: 'maybe',
      MODE: 'fast',
      WAIT: '5 parsecs',
    });
    env.integer('PORT', { default: 1, description: '' });
    env.number('RATIO', { default: 0.5, max: 1, description: '' });
    env.boolean('FLAG', { default: false, description: '' });
    env.oneOf('MODE', ['slow', 'safe'], { default: 'safe', description: '' });
    env.durationMs('WAIT', { default: 1, description: '' });
    env.requiredString('SECRET', { description: 'the secret' });
    let error: unknown;
    try {
      env.finish();
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const problems = (error as ConfigError).problems;
    expect(problems).toHaveLength(6);
    expect(problems.join('\n')).toMatch(/PORT must be an integer/);
    expect(problems.join('\n')).toMatch(/RATIO must be at most 1/);
    expect(problems.join('\n')).toMatch(/SECRET is required/);
  });

  it('refuses a duration longer than a timer can wait, unless the variable allows more', () => {
    // Node.js would run a longer interval after 1 ms, again and again.
    const env = new EnvReader({ POLL: '30d', JUST_FITS: `${MAX_TIMER_MS}`, TTL: '400d' });
    expect(env.durationMs('POLL', { default: 500, description: '' })).toBe(500);
    expect(env.durationMs('JUST_FITS', { default: 500, description: '' })).toBe(MAX_TIMER_MS);
    expect(env.durationMs('TTL', { default: 1, max: 3650 * 86_400_000, description: '' })).toBe(
      400 * 86_400_000,
    );
    expect(() => {
      env.finish();
    }).toThrow(/POLL must be at most 2147483647ms \(about 24.8 days.*got "30d"/);
    const capped = new EnvReader({ TTL: '400d' });
    capped.durationMs('TTL', { default: 1, max: 365 * 86_400_000, description: '' });
    expect(() => {
      capped.finish();
    }).toThrow('TTL must be at most 365d, got "400d"');
  });

  it.each([
    ['250ms', 250],
    ['5s', 5000],
    ['1.5m', 90_000],
    ['2h', 7_200_000],
    ['7d', 604_800_000],
    ['300', 300],
    ['soon', undefined],
  ])('parses the duration %s', (text, ms) => {
    expect(parseDurationMs(text)).toBe(ms);
  });
});

describe('readPlatformConfig', () => {
  it('names the port variable after the service and falls back to embedded storage and the in-process bus', () => {
    const env = new EnvReader({ TANDEM_ASSIGNMENT_PORT: '6000' });
    const config = readPlatformConfig(env, 'assignment', 50051);
    env.finish();
    expect(config.grpc.port).toBe(6000);
    expect(config.mongodbUri).toBeUndefined();
    expect(config.natsUrl).toBeUndefined();
    expect(config.tls).toBeUndefined();
  });

  it('reads the handler slice in microseconds: 500 unless set, 0 to turn pacing off', () => {
    const defaults = new EnvReader({});
    expect(readPlatformConfig(defaults, 'assignment', 50051).grpc.handlerSliceUs).toBe(500);
    const off = new EnvReader({ TANDEM_GRPC_HANDLER_SLICE_US: '0' });
    expect(readPlatformConfig(off, 'assignment', 50051).grpc.handlerSliceUs).toBe(0);
    off.finish();
    expect(platformProblems({ TANDEM_GRPC_HANDLER_SLICE_US: '-1' })).toEqual([
      expect.stringMatching(/^TANDEM_GRPC_HANDLER_SLICE_US must be at least 0/),
    ]);
    expect(platformProblems({ TANDEM_GRPC_HANDLER_SLICE_US: '0.5ms' })).toHaveLength(1);
  });

  it('refuses a keepalive timeout no ping can be answered within, which would drop every connection and its calls', () => {
    // grpc-js destroys a connection whose ping is not answered within the timeout, calls in flight
    // included: with 0 (or a few ms) that is every connection, at its first keepalive ping.
    for (const timeout of ['0', '0s', '5ms']) {
      expect(platformProblems({ TANDEM_GRPC_KEEPALIVE_TIMEOUT: timeout })).toEqual([
        expect.stringMatching(/^TANDEM_GRPC_KEEPALIVE_TIMEOUT must be at least 1000/),
      ]);
    }
    expect(platformProblems({ TANDEM_GRPC_KEEPALIVE_TIMEOUT: '1s' })).toEqual([]);
  });

  it('refuses an admin token no client can send in a header, which would lock every admin RPC', () => {
    expect(platformProblems({ TANDEM_ADMIN_TOKEN: 'pässwörd' })).toEqual([
      expect.stringMatching(/^TANDEM_ADMIN_TOKEN: use printable ASCII/),
    ]);
    expect(platformProblems({ TANDEM_ADMIN_TOKEN: 'two  spaces' })).toHaveLength(1);
    expect(platformProblems({ TANDEM_ADMIN_TOKEN: 's3cr3t-T0ken_with.dots~' })).toEqual([]);
    expect(platformProblems({ TANDEM_ADMIN_TOKEN: 'a longer phrase token' })).toEqual([]);
  });

  it('refuses an admin token short enough to guess, naming the variable', () => {
    for (const token of ['admin', 'changeme', 's3cret-admin', '0123456789abcde']) {
      expect(platformProblems({ TANDEM_ADMIN_TOKEN: token })).toEqual([
        expect.stringMatching(/^TANDEM_ADMIN_TOKEN must be at least 16 characters/),
      ]);
    }
    // The token itself is not repeated in the problem, which is logged.
    expect(platformProblems({ TANDEM_ADMIN_TOKEN: 'changeme' })[0]).not.toContain('changeme');
    expect(platformProblems({ TANDEM_ADMIN_TOKEN: '0123456789abcdef' })).toEqual([]);
  });

  it('refuses a TLS certificate without its key', () => {
    const env = new EnvReader({ TANDEM_TLS_CERT_FILE: '/etc/tls/cert.pem' });
    readPlatformConfig(env, 'assignment', 50051);
    expect(() => {
      env.finish();
    }).toThrow(/TANDEM_TLS_CERT_FILE and TANDEM_TLS_KEY_FILE must be set together/);
  });

  it('refuses a CA bundle without a certificate and key: the server would run in plaintext', () => {
    expect(platformProblems({ TANDEM_TLS_CA_FILE: __filename })).toEqual([
      'TANDEM_TLS_CA_FILE needs TANDEM_TLS_CERT_FILE and TANDEM_TLS_KEY_FILE',
    ]);
  });

  it('names each TLS file it cannot read, and takes the ones it can', () => {
    const dir = mkdtempSync(join(tmpdir(), 'tandem-config-tls-'));
    try {
      const cert = join(dir, 'cert.pem');
      writeFileSync(cert, 'not checked here: grpc-js reads it');
      expect(
        platformProblems({
          TANDEM_TLS_CERT_FILE: cert,
          TANDEM_TLS_KEY_FILE: join(dir, 'key.pem'),
          TANDEM_TLS_CA_FILE: join(dir, 'ca.pem'),
        }),
      ).toEqual([
        `TANDEM_TLS_KEY_FILE: cannot read "${join(dir, 'key.pem')}" (ENOENT)`,
        `TANDEM_TLS_CA_FILE: cannot read "${join(dir, 'ca.pem')}" (ENOENT)`,
      ]);
      expect(platformProblems({ TANDEM_TLS_CERT_FILE: cert, TANDEM_TLS_KEY_FILE: cert })).toEqual(
        [],
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('names a TLS variable set to a directory (a mounted secret rather than its file), which cannot be read as one', () => {
    // access(R_OK) passes on a directory; reading it at start-up then fails with a bare EISDIR
    // that names neither the variable nor the path.
    const dir = mkdtempSync(join(tmpdir(), 'tandem-config-tls-'));
    try {
      const cert = join(dir, 'tls.crt');
      writeFileSync(cert, 'not checked here: grpc-js reads it');
      expect(platformProblems({ TANDEM_TLS_CERT_FILE: cert, TANDEM_TLS_KEY_FILE: dir })).toEqual([
        `TANDEM_TLS_KEY_FILE: cannot read "${dir}" (EISDIR)`,
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.each([
    'nats://127.0.0.1:4222',
    '127.0.0.1:4222',
    'nats://a:4222, tls://b:4222',
    'nats://alice:secret@nats.internal:4222',
    'nats://alice:p@ss@nats.internal:4222',
    'token@nats.internal',
    'nats://[::1]:4222',
  ])('takes the NATS_URL %s', (url) => {
    expect(platformProblems({ NATS_URL: url })).toEqual([]);
  });

  it.each([
    ['nats://alice:secret@127.0.0.1:ab', 'NATS_URL: "nats://***@127.0.0.1:ab" is not a server URL'],
    ['nats://exa mple:4222', 'NATS_URL: "nats://exa mple:4222" is not a server URL'],
    ['nats://alice:se/cret@127.0.0.1:4222', 'NATS_URL: "nats://***@127.0.0.1:4222" is not a'],
    ['ws://127.0.0.1:8080', 'NATS_URL: "ws://127.0.0.1:8080" must use nats:// or tls://'],
    [',', 'NATS_URL: names no server'],
  ])('refuses the NATS_URL %s, without showing its credentials', (url, problem) => {
    const problems = platformProblems({ NATS_URL: url });
    expect(problems).toEqual([expect.stringContaining(problem)]);
    expect(problems.join('\n')).not.toContain('secret');
  });

  it.each([
    'mongodb://127.0.0.1:27017/?directConnection=true',
    'mongodb://alice:secret@db-0,db-1:27018/tandem?replicaSet=rs0',
    'mongodb+srv://alice:secret@cluster0.example.net/tandem',
  ])('takes the MONGODB_URI %s', (uri) => {
    expect(platformProblems({ MONGODB_URI: uri })).toEqual([]);
  });

  it.each([
    ['not-a-uri', 'Invalid scheme'],
    ['mongodb://', 'host list are required'],
    ['mongodb://alice:secret@db:port/', 'Unable to parse db:port'],
    ['mongodb://db/?retryWritez=true', 'option retrywritez is not supported'],
  ])('refuses the MONGODB_URI %s as the driver would, without its credentials', (uri, reason) => {
    const problems = platformProblems({ MONGODB_URI: uri });
    expect(problems).toEqual([
      expect.stringMatching(
        new RegExp(`^MONGODB_URI is not a MongoDB connection string: .*${reason}`),
      ),
    ]);
    expect(problems.join('\n')).not.toContain('secret');
  });
});
