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
});
