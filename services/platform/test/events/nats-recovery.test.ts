/**
 * The NATS bus when the server is not there at start-up, and when it comes back without its
 * JetStream state, played with a nats-server of the test's own on a fixed port:
 * - a bus created while nothing listens serves degraded (publish refused, declarations and
 *   subscriptions taken at once) and carries them out once the server starts;
 * - a server restarted on an empty store gets the bus's streams declared again, and publishing
 *   and consumption resume without restarting the bus.
 */
import { spawn, spawnSync } from 'node:child_process';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { EchoRequest } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { FailedPreconditionError, UnavailableError } from '../../src/errors';
import { BufferedPublisher } from '../../src/events/buffered-publisher';
import type { BusLogger, EventBus, Subscription } from '../../src/events/bus';
import { connectNatsBus } from '../../src/events/nats-bus';
import { TestNatsServer, freePort } from '../support/nats-server';
import { eventually } from './event-bus-contract';

const hasServer = spawnSync('nats-server', ['--version']).status === 0;
const describeWithServerBinary = hasServer ? describe : describe.skip;

function echo(message: string): EchoRequest {
  return { message, failWithCode: 0, delay: undefined, requireMessage: false };
}

/** A logger that keeps the messages it was given, by level, and everything it logged as text. */
function recordingLogger(): BusLogger & {
  readonly lines: { level: string; message: string }[];
  readonly text: string[];
} {
  const lines: { level: string; message: string }[] = [];
  const text: string[] = [];
  const record =
    (level: string) =>
    (fields: object, message: string): void => {
      lines.push({ level, message });
      text.push(`${message} ${JSON.stringify(fields)}`);
    };
  return { lines, text, info: record('info'), warn: record('warn'), error: record('error') };
}

/** Stream names the server holds now. */
async function streamNames(url: string): Promise<string[]> {
  const admin = await connect({ servers: url });
  try {
    const manager = await jetstreamManager(admin);
    const names: string[] = [];
    for await (const name of manager.streams.names()) names.push(name);
    return names;
  } finally {
    await admin.close();
  }
}

describeWithServerBinary('NATS event bus started before its server', () => {
  let server: TestNatsServer;
  let bus: EventBus | undefined;
  let subscription: Subscription | undefined;

  beforeEach(async () => {
    // A reserved port and store; nothing listens until the test starts the server.
    server = await TestNatsServer.create();
  });

  afterEach(async () => {
    await subscription?.stop();
    subscription = undefined;
    await bus?.close();
    bus = undefined;
    await server.dispose();
  });

  it('serves degraded while nothing listens, then declares, subscribes and publishes once the server starts', async () => {
    const logger = recordingLogger();
    bus = await connectNatsBus({
      servers: server.url,
      name: 'tandem-late-server-test',
      logger,
      connectTimeoutMs: 1_000,
      whenUnreachable: 'connect-in-background',
    });
    expect(bus.isConnected()).toBe(false);
    expect(logger.lines).toContainEqual({
      level: 'warn',
      message: expect.stringContaining('NATS unreachable') as string,
    });
    await expect(
      bus.publish('late.exposure', EchoRequest, echo('refused'), { eventId: 'refused' }),
    ).rejects.toBeInstanceOf(UnavailableError);
    await expect(bus.consumerPending!('LATE', 'analysis')).rejects.toBeInstanceOf(UnavailableError);
    // These resolve while no server listens: a bus that waited for one would time the test out.
    await bus.declareStream({ name: 'LATE', subjects: ['late.>'] });
    const received: string[] = [];
    subscription = await bus.subscribe(
      { stream: 'LATE', durable: 'analysis', codec: EchoRequest },
      (delivered) => {
        received.push(delivered.event.message);
        return Promise.resolve();
      },
    );
    expect(subscription.stats()).toEqual({ acked: 0, retried: 0, dropped: 0, poison: 0 });
    // Stopped before the server answers: never started.
    const abandoned = await bus.subscribe(
      { stream: 'LATE', durable: 'abandoned', codec: EchoRequest },
      () => Promise.resolve(),
    );
    await abandoned.stop();
    expect(bus.isConnected()).toBe(false);

    server.start();
    await eventually(() => {
      expect(bus!.isConnected()).toBe(true);
    }, 30_000);
    // The stream is declared once connected; until then a publish may find no stream.
    await eventually(async () => {
      await bus!.publish('late.exposure', EchoRequest, echo('after'), { eventId: 'after' });
    }, 30_000);
    await eventually(() => {
      expect(received).toEqual(['after']);
    }, 30_000);
    expect(subscription.stats().acked).toBe(1);
    expect(await streamNames(server.url)).toEqual(['LATE']);
    expect(await bus.consumerPending!('LATE', 'analysis')).toBe(0);
    expect(await bus.consumerPending!('LATE', 'abandoned')).toBeUndefined();
  }, 90_000);

  it('fails by default when nothing listens: connecting in the background is asked for', async () => {
    await expect(
      connectNatsBus({ servers: server.url, name: 'tandem-default-test', connectTimeoutMs: 500 }),
    ).rejects.toBeInstanceOf(UnavailableError);
  });

  it('closes at once before its server ever answered', async () => {
    bus = await connectNatsBus({
      servers: server.url,
      name: 'tandem-never-test',
      whenUnreachable: 'connect-in-background',
    });
    await bus.declareStream({ name: 'NEVER', subjects: ['never.>'] });
    const never = await bus.subscribe(
      { stream: 'NEVER', durable: 'never', codec: EchoRequest },
      () => Promise.resolve(),
    );
    await bus.close();
    await never.stop();
    expect(bus.isConnected()).toBe(false);
    await expect(
      bus.declareStream({ name: 'NEVER', subjects: ['never.>'] }),
    ).rejects.toBeInstanceOf(UnavailableError);
  });

  it('fails at once, not retried, when the server refuses it or has no JetStream', async () => {
    const port = await freePort();
    // Token authentication, and no JetStream (-js not given).
    const plain = spawn(
      'nats-server',
      ['-a', '127.0.0.1', '-p', String(port), '--auth', 's3cret'],
      {
        stdio: 'ignore',
      },
    );
    try {
      const url = `nats://127.0.0.1:${port}`;
      let refusal: unknown;
      await eventually(async () => {
        refusal = await connectNatsBus({
          servers: url,
          name: 'tandem-refused-test',
          token: 'wrong',
        })
          .then((refusedBus) => refusedBus.close())
          .catch((error: unknown) => error);
        expect(refusal).toBeInstanceOf(FailedPreconditionError);
      }, 15_000);
      expect((refusal as Error).message).toContain('Authorization Violation');
      await expect(
        connectNatsBus({ servers: url, name: 'tandem-no-jetstream-test', token: 's3cret' }),
      ).rejects.toThrow('JetStream is not enabled');
    } finally {
      plain.kill('SIGTERM');
    }
  });

  it('never shows the credentials in a server URL, in its logs or its errors', async () => {
    // With an `@` in it, as a password may have.
    const secret = 'pa55@word-in-url';
    const withCredentials = `nats://alice:${secret}@127.0.0.1:${server.port}`;
    const logger = recordingLogger();
    bus = await connectNatsBus({
      servers: withCredentials,
      name: 'tandem-credentials-test',
      logger,
      connectTimeoutMs: 500,
      whenUnreachable: 'connect-in-background',
    });
    const unreachable = await connectNatsBus({
      servers: withCredentials,
      name: 'tandem-credentials-test',
      connectTimeoutMs: 500,
    }).catch((error: unknown) => error);
    const unusable = await connectNatsBus({
      servers: `nats://alice:${secret}@127.0.0.1:port`,
      name: 'tandem-credentials-test',
    }).catch((error: unknown) => error);
    expect(unreachable).toBeInstanceOf(UnavailableError);
    expect(unusable).toBeInstanceOf(FailedPreconditionError);
    const shown = [...logger.text, (unreachable as Error).message, (unusable as Error).message];
    expect(shown.join('\n')).not.toContain('pa55');
    expect(shown.join('\n')).not.toContain('word-in-url');
    expect(logger.text.join('\n')).toContain(`nats://***@127.0.0.1:${server.port}`);
    expect((unreachable as Error).message).toContain(`nats://***@127.0.0.1:${server.port}`);
  });

  it('fails at once, not retried, on a server URL it cannot use', async () => {
    await expect(
      connectNatsBus({ servers: 'nats://exa mple:4222', name: 'tandem-bad-url-test' }),
    ).rejects.toBeInstanceOf(FailedPreconditionError);
  });
});

describeWithServerBinary(
  'NATS event bus when its server comes back without JetStream state',
  () => {
    let server: TestNatsServer;

    beforeEach(async () => {
      server = await TestNatsServer.create();
      server.start();
    });

    afterEach(async () => {
      await server.dispose();
    });

    it('declares its streams again, and publishing and consumption resume', async () => {
      const logger = recordingLogger();
      let connected: EventBus | undefined;
      // Once the freshly spawned server listens.
      await eventually(async () => {
        connected = await connectNatsBus({
          servers: server.url,
          name: 'tandem-wiped-test',
          logger,
          whenUnreachable: 'fail',
        });
      }, 15_000);
      const bus = connected!;
      const publisher = new BufferedPublisher(bus, {
        initialRetryDelayMs: 50,
        maxRetryDelayMs: 500,
      });
      await bus.declareStream({ name: 'WIPED', subjects: ['wiped.>'] });
      const received: string[] = [];
      const subscription = await bus.subscribe(
        { stream: 'WIPED', durable: 'analysis', codec: EchoRequest },
        (delivered) => {
          received.push(delivered.event.message);
          return Promise.resolve();
        },
      );
      await bus.publish('wiped.exposure', EchoRequest, echo('before'), { eventId: 'before' });
      await eventually(() => {
        expect(received).toEqual(['before']);
      }, 15_000);

      await server.stop();
      server.clearStore();
      await eventually(() => {
        expect(bus.isConnected()).toBe(false);
      }, 15_000);
      server.start();
      await eventually(() => {
        expect(bus.isConnected()).toBe(true);
      }, 30_000);

      publisher.enqueue('wiped.exposure', EchoRequest, echo('buffered'), 'buffered');
      await expect(publisher.flush(30_000)).resolves.toBe(true);
      await eventually(async () => {
        await bus.publish('wiped.exposure', EchoRequest, echo('direct'), { eventId: 'direct' });
      }, 30_000);
      await eventually(() => {
        expect([...received].sort()).toEqual(['before', 'buffered', 'direct']);
      }, 30_000);
      expect(await streamNames(server.url)).toEqual(['WIPED']);
      // Said once, not per event.
      const lost = logger.lines.filter((line) => line.message.includes('NATS had lost streams'));
      expect(lost).toHaveLength(1);

      await publisher.close();
      await subscription.stop();
      await bus.close();
    }, 120_000);
  },
);
