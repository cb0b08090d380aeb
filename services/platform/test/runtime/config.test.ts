import { ConfigError, EnvReader, parseDurationMs, readPlatformConfig } from '../../src/config';

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

  it('refuses a TLS certificate without its key', () => {
    const env = new EnvReader({ TANDEM_TLS_CERT_FILE: '/etc/tls/cert.pem' });
    readPlatformConfig(env, 'assignment', 50051);
    expect(() => {
      env.finish();
    }).toThrow(/TANDEM_TLS_CERT_FILE and TANDEM_TLS_KEY_FILE must be set together/);
  });
});
