import { Writable } from 'node:stream';
import { UnavailableError } from '../../src/errors';
import { createLogger, errorText, withoutUrlCredentials } from '../../src/logging';

/** A logger whose lines are collected, parsed. */
function capturingLogger(): { logger: ReturnType<typeof createLogger>; lines: string[] } {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      lines.push(chunk.toString('utf8'));
      callback();
    },
  });
  return { logger: createLogger({ service: 'test', level: 'info', destination }), lines };
}

/** pino writes synchronously to a plain stream, but the Writable may defer: wait a tick. */
const flushed = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('withoutUrlCredentials', () => {
  it.each([
    ['mongodb://app:s3cret@db:27017/tandem', 'mongodb://***@db:27017/tandem'],
    ['connect to nats://token@nats:4222 failed', 'connect to nats://***@nats:4222 failed'],
    // A password may hold '@' and '/': everything up to the last '@' of the URL goes.
    ['tls://u:p@ss/w@rd@host:4222 refused', 'tls://***@host:4222 refused'],
    [
      'servers mongodb://a:b@h1,h2/db?replicaSet=r and nats://c:d@n1',
      'servers mongodb://***@h1,h2/db?replicaSet=r and nats://***@n1',
    ],
  ])('%s', (text, expected) => {
    expect(withoutUrlCredentials(text)).toBe(expected);
  });

  it('leaves text without URL credentials alone', () => {
    for (const text of ['nats://nats:4222', 'user@example.com wrote', 'no URL here']) {
      expect(withoutUrlCredentials(text)).toBe(text);
    }
  });
});

describe('errorText', () => {
  it("gives a log field what the dependency said, which the caller's message leaves out", () => {
    const driverError = new Error('connect ECONNREFUSED 10.0.0.5:27017 (mongodb://app:s3cret@db)');
    const error = new UnavailableError('storage is unavailable; retry with backoff', {
      cause: driverError,
    });
    expect(errorText(error)).toBe(
      'storage is unavailable; retry with backoff: connect ECONNREFUSED 10.0.0.5:27017 (mongodb://***@db)',
    );
    expect(errorText('not an error')).toBe('not an error');
  });
});

describe('logged errors', () => {
  it('carry no URL credentials in their message, their causes or their properties', async () => {
    const { logger, lines } = capturingLogger();
    const cause = new Error('getaddrinfo ENOTFOUND for nats://operator:hunter2@nats-0:4222');
    const error = Object.assign(
      new Error('cannot connect to mongodb://app:s3cret@db:27017/tandem', { cause }),
      { uri: 'mongodb://app:s3cret@db:27017', details: { servers: ['tls://t0ken@nats-1:4222'] } },
    );
    logger.error({ err: error }, 'storage failed');
    await flushed();
    expect(lines).toHaveLength(1);
    const line = lines[0] as string;
    for (const secret of ['s3cret', 'hunter2', 't0ken', 'operator']) {
      expect(line).not.toContain(secret);
    }
    const logged = JSON.parse(line) as {
      err: { type: string; message: string; stack: string; uri: string; details: unknown };
    };
    expect(logged.err.type).toBe('Error');
    // pino appends the cause's message; both are there, without their credentials.
    expect(logged.err.message).toBe(
      'cannot connect to mongodb://***@db:27017/tandem: ' +
        'getaddrinfo ENOTFOUND for nats://***@nats-0:4222',
    );
    expect(logged.err.stack).toContain('caused by: Error: getaddrinfo ENOTFOUND for nats://***@');
    expect(logged.err.uri).toBe('mongodb://***@db:27017');
    expect(logged.err.details).toEqual({ servers: ['tls://***@nats-1:4222'] });
  });

  it("leaves the logged error's own properties as they were", async () => {
    const { logger } = capturingLogger();
    const details = { servers: ['tls://t0ken@nats-1:4222'] };
    const error = Object.assign(new Error('x'), { details });
    logger.error({ err: error }, 'failed');
    await flushed();
    expect(error.details).toBe(details);
    expect(details.servers[0]).toBe('tls://t0ken@nats-1:4222');
  });

  it('redacts an `err` that is not an Error', async () => {
    const { logger, lines } = capturingLogger();
    logger.warn({ err: { message: 'nats://u:pw@h refused' } }, 'odd');
    await flushed();
    expect(JSON.parse(lines[0] as string)).toMatchObject({
      err: { message: 'nats://***@h refused' },
    });
  });
});

describe('logged errors nested in a logged error', () => {
  it('carry no URL credentials either: aggregated errors, errors and URLs as properties', async () => {
    const { logger, lines } = capturingLogger();
    const inner = new Error('cannot reach mongodb://admin:hunter2@db:27017');
    logger.error(
      {
        err: Object.assign(new AggregateError([inner], 'all failed'), {
          original: new Error('via nats://op:s3cret@nats:4222'),
          url: new URL('https://user:t0ken@example.com/path'),
        }),
      },
      'failed',
    );
    await flushed();
    const line = lines[0] as string;
    for (const secret of ['hunter2', 's3cret', 't0ken']) expect(line).not.toContain(secret);
    expect(JSON.parse(line)).toMatchObject({
      err: {
        aggregateErrors: [{ message: 'cannot reach mongodb://***@db:27017' }],
        original: { message: 'via nats://***@nats:4222' },
        url: 'https://***@example.com/path',
      },
    });
  });
});
