/**
 * In-process gRPC tests on the embedded store and the in-process bus, as `make dev` runs it, plus
 * what only that set-up shows: a replica whose storage fails at start refuses to serve.
 */
import { UnavailableError } from '../../platform/src/errors';
import { bootstrap } from '../../platform/src/bootstrap';
import type { DocumentStore } from '../../platform/src/storage/collection';
import { startAssignment } from '../src/service';
import { temporaryDataDir, testConfig } from './support/harness';
import { runServiceSuite } from './support/service-suite';

runServiceSuite('embedded store, in-process bus', () => ({ dataDir: temporaryDataDir() }));

describe('a replica whose storage is down at start', () => {
  it('fails to start, so it never binds or reports SERVING', async () => {
    const config = testConfig({});
    const runtime = await bootstrap(config.platform);
    const down: DocumentStore = {
      kind: 'mongodb',
      collection: () => Promise.reject(new UnavailableError('storage is unreachable')),
      ping: () => Promise.reject(new UnavailableError('storage is unreachable')),
      close: () => Promise.resolve(),
    };
    try {
      await expect(startAssignment({ ...runtime, store: down }, config)).rejects.toBeInstanceOf(
        UnavailableError,
      );
    } finally {
      await runtime.shutdown.run(5000);
    }
  });
});
