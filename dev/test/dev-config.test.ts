/**
 * `make dev`'s configuration on hosts whose names a replica id cannot hold: a macOS laptop's
 * `*.local` name or a cloud VM's dotted one made `make dev` refuse to start, for a variable the
 * user never set.
 */
import { ConfigError } from '../../services/platform/src/config';
import { readDevConfig } from '../config';

describe("make dev's configuration", () => {
  it.each([
    ['Johns-MacBook-Pro.local', 'dev-Johns-MacBook-Pro-local'],
    ['ip-10-0-0-1.eu-west-1.compute.internal', 'dev-ip-10-0-0-1-eu-west-1-compute-internal'],
    ['café', 'dev-caf-'],
    ['h'.repeat(100), `dev-${'h'.repeat(60)}`],
  ])('starts on the host %s, as replica %s', (host, replicaId) => {
    expect(readDevConfig({}, host).assignment.replicaId).toBe(replicaId);
  });

  it('still refuses a replica id set to one it cannot hold', () => {
    expect(() => readDevConfig({ TANDEM_ASSIGNMENT_REPLICA_ID: 'a.b' }, 'host')).toThrow(
      ConfigError,
    );
  });
});
