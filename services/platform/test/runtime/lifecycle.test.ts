import { Shutdown } from '../../src/lifecycle';
import { createLogger } from '../../src/logging';

const logger = createLogger({ service: 'test', level: 'silent' });

describe('Shutdown', () => {
  it('runs steps in reverse order of registration, once', async () => {
    const order: string[] = [];
    const shutdown = new Shutdown(logger);
    for (const name of ['storage', 'event bus', 'gRPC server']) {
      shutdown.add(name, () => {
        order.push(name);
        return Promise.resolve();
      });
    }
    await Promise.all([shutdown.run(1000), shutdown.run(1000)]);
    expect(order).toEqual(['gRPC server', 'event bus', 'storage']);
  });

  it('runs final steps after all others, whenever they were registered', async () => {
    const order: string[] = [];
    const shutdown = new Shutdown(logger);
    const step = (name: string) => () => {
      order.push(name);
      return Promise.resolve();
    };
    shutdown.add('storage', step('storage'));
    shutdown.addFinal('telemetry', step('telemetry'));
    shutdown.add('gRPC server', step('gRPC server'));
    await shutdown.run(1000);
    expect(order).toEqual(['gRPC server', 'storage', 'telemetry']);
  });

  it('gives up on a hanging step at the deadline and still runs the rest, then reports failure', async () => {
    const order: string[] = [];
    const shutdown = new Shutdown(logger);
    shutdown.add('storage', () => {
      order.push('storage');
      return Promise.resolve();
    });
    shutdown.add('stuck consumer', () => new Promise<void>(() => undefined));
    const started = Date.now();
    await expect(shutdown.run(200)).rejects.toThrow(/did not complete cleanly/);
    expect(Date.now() - started).toBeLessThan(1000);
    expect(order).toEqual(['storage']);
  });

  it('runs a step registered while it is running next, before the earlier ones', async () => {
    const order: string[] = [];
    const shutdown = new Shutdown(logger);
    shutdown.add('storage', () => {
      order.push('storage');
      return Promise.resolve();
    });
    shutdown.add('gRPC server', () => {
      order.push('gRPC server');
      // Start-up, still running after a signal, opens one more thing.
      shutdown.add('aggregations', () => {
        order.push('aggregations');
        return Promise.resolve();
      });
      return Promise.resolve();
    });
    await shutdown.run(1000);
    expect(order).toEqual(['gRPC server', 'aggregations', 'storage']);
  });

  describe('runAndEnd', () => {
    function recordingEnd(): { ends: string[]; end: { exit(code: number): void; kill(): void } } {
      const ends: string[] = [];
      return {
        ends,
        end: {
          exit: (code) => ends.push(`exit ${code}`),
          kill: () => ends.push('kill'),
        },
      };
    }

    it('exits with 0 after a clean shutdown and with 1 after a step failed', async () => {
      const clean = new Shutdown(logger);
      clean.add('storage', () => Promise.resolve());
      const failing = new Shutdown(logger);
      failing.add('event bus', () => Promise.reject(new Error('NATS is down')));
      const { ends, end } = recordingEnd();

      await clean.runAndEnd(1000, end);
      await failing.runAndEnd(1000, end);

      expect(ends).toEqual(['exit 0', 'exit 1']);
    });

    it('kills the process when a step is still running at the deadline, as exiting could wait for it forever', async () => {
      const shutdown = new Shutdown(logger);
      shutdown.add('storage', () => new Promise<void>(() => undefined));
      const { ends, end } = recordingEnd();

      await shutdown.runAndEnd(100, end);

      expect(ends).toEqual(['kill']);
    });

    it('also kills the process when a step of a nested shutdown overran', async () => {
      // As `make dev` runs each service's own shutdown as one step.
      const service = new Shutdown(logger);
      service.add('storage', () => new Promise<void>(() => undefined));
      const shutdown = new Shutdown(logger);
      shutdown.add('assignment', () => service.run(100));
      const { ends, end } = recordingEnd();

      await shutdown.runAndEnd(1000, end);

      expect(ends).toEqual(['kill']);
    });
  });

  describe('startUp', () => {
    it('ends the process through abortStartup when start-up fails', async () => {
      const order: string[] = [];
      const shutdown = new Shutdown(logger);
      shutdown.add('storage', () => {
        order.push('storage');
        return Promise.resolve();
      });
      const ends: string[] = [];
      const before = { SIGTERM: process.listeners('SIGTERM'), SIGINT: process.listeners('SIGINT') };

      await shutdown.startUp(1000, () => Promise.reject(new Error('port in use')), {
        exit: (code) => ends.push(`exit ${code}`),
        kill: () => ends.push('kill'),
      });

      for (const signal of ['SIGTERM', 'SIGINT'] as const) {
        const added = process.listeners(signal).filter((l) => !before[signal].includes(l));
        expect(added).toHaveLength(1);
        for (const listener of added) process.off(signal, listener);
      }
      expect(order).toEqual(['storage']);
      expect(ends).toEqual(['exit 1']);
    });
  });

  describe('signals', () => {
    it('a second signal during the shutdown is ignored, not left to end the process', async () => {
      const before = { SIGTERM: process.listeners('SIGTERM'), SIGINT: process.listeners('SIGINT') };
      const order: string[] = [];
      const shutdown = new Shutdown(logger);
      let closeStorage = (): void => undefined;
      shutdown.add('storage', () => {
        order.push('storage');
        return new Promise<void>((resolve) => {
          closeStorage = resolve;
        });
      });
      shutdown.addFinal('telemetry', () => {
        order.push('telemetry');
        return Promise.resolve();
      });
      const ends: string[] = [];
      await shutdown.startUp(5000, () => Promise.resolve(), {
        exit: (code) => ends.push(`exit ${code}`),
        kill: () => ends.push('kill'),
      });
      const added = (signal: 'SIGTERM' | 'SIGINT') =>
        process.listeners(signal).filter((l) => !before[signal].includes(l));
      try {
        process.emit('SIGTERM', 'SIGTERM');
        expect(order).toEqual(['storage']);
        // Still listened for: with no listener, Node's default action would end the process
        // while storage closes.
        expect([added('SIGTERM'), added('SIGINT')].map((l) => l.length)).toEqual([1, 1]);
        process.emit('SIGTERM', 'SIGTERM');
        process.emit('SIGINT', 'SIGINT');
        closeStorage();
        await shutdown.run(5000);
        await new Promise((resolve) => setImmediate(resolve));
        expect(order).toEqual(['storage', 'telemetry']);
        expect(ends).toEqual(['exit 0']);
      } finally {
        for (const signal of ['SIGTERM', 'SIGINT'] as const) {
          for (const listener of added(signal)) process.off(signal, listener);
        }
      }
    });
  });

  describe('abortStartup', () => {
    it('closes what start-up opened, in reverse, and exits with 1 even when closing succeeds', async () => {
      const order: string[] = [];
      const shutdown = new Shutdown(logger);
      shutdown.add('event bus', () => {
        order.push('event bus');
        return Promise.resolve();
      });
      shutdown.add('storage', () => {
        order.push('storage');
        return Promise.resolve();
      });
      const ends: string[] = [];

      await shutdown.abortStartup(new Error('port in use'), 1000, {
        exit: (code) => ends.push(`exit ${code}`),
        kill: () => ends.push('kill'),
      });

      expect(order).toEqual(['storage', 'event bus']);
      expect(ends).toEqual(['exit 1']);
    });

    it('leaves ending the process to a shutdown already running, after waiting for it', async () => {
      const order: string[] = [];
      const shutdown = new Shutdown(logger);
      let closeStorage = (): void => undefined;
      shutdown.add('storage', () => {
        order.push('storage');
        return new Promise<void>((resolve) => {
          closeStorage = resolve;
        });
      });
      const ends: string[] = [];
      const end = {
        exit: (code: number) => ends.push(`exit ${code}`),
        kill: () => ends.push('kill'),
      };
      // A signal arrives during start-up, then start-up fails because its storage is closing.
      const signalled = shutdown.runAndEnd(1000, end);
      let aborted = false;
      const aborting = shutdown
        .abortStartup(new Error('store is closed'), 1000, end)
        .then(() => (aborted = true));
      await new Promise((resolve) => setImmediate(resolve));
      expect(aborted).toBe(false);

      closeStorage();
      await Promise.all([signalled, aborting]);

      expect(order).toEqual(['storage']);
      expect(ends).toEqual(['exit 0']);
    });

    it('kills the process when closing overruns, as runAndEnd does', async () => {
      const shutdown = new Shutdown(logger);
      shutdown.add('storage', () => new Promise<void>(() => undefined));
      const ends: string[] = [];

      await shutdown.abortStartup(new Error('port in use'), 100, {
        exit: (code) => ends.push(`exit ${code}`),
        kill: () => ends.push('kill'),
      });

      expect(ends).toEqual(['kill']);
    });
  });
});
