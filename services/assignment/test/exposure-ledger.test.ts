/**
 * The exposure ledger on each store: what one publisher records, another (a second replica, a
 * restarted one) finds, until the exposure's UTC day is over.
 */
import { rmSync } from 'node:fs';
import type { DocumentStore } from '../../platform/src/storage/collection';
import { openStore } from '../../platform/src/storage/open-store';
import { mongodbUri, uniqueName } from '../../platform/test/support/integration';
import { ExposureLedger, ledgerExpiry } from '../src/store/exposure-ledger';
import { dropDatabases, temporaryDataDir } from './support/harness';

describe('ledgerExpiry', () => {
  it('keeps an exposure a day and an hour past its UTC day (a token applied late, clocks)', () => {
    const now = Date.parse('2026-12-05T23:59:00Z');
    expect(ledgerExpiry('exposure-2026-12-05-AbC_d', now).toISOString()).toBe(
      '2026-12-07T01:00:00.000Z',
    );
    expect(ledgerExpiry('exposure-2024-02-29-x', now).toISOString()).toBe(
      '2024-03-02T01:00:00.000Z',
    );
  });

  it('keeps an id without a day for two days and an hour from now', () => {
    const now = Date.parse('2026-12-05T12:00:00Z');
    for (const id of ['other-id', 'exposure-2026-13-45-x', 'exposure-20261205-x']) {
      expect(ledgerExpiry(id, now).toISOString()).toBe('2026-12-07T13:00:00.000Z');
    }
  });
});

const stores: [string, () => Promise<{ store: DocumentStore; cleanUp: () => Promise<void> }>][] = [
  [
    'the embedded store',
    async () => {
      const dataDir = temporaryDataDir();
      return {
        store: await openStore({ service: 'assignment', dataDir }),
        cleanUp: () => {
          rmSync(dataDir, { recursive: true, force: true });
          return Promise.resolve();
        },
      };
    },
  ],
];
if (mongodbUri) {
  const uri = mongodbUri;
  stores.push([
    'MongoDB',
    async () => {
      const service = uniqueName('assignment');
      return {
        store: await openStore({ service, mongodbUri: uri, dataDir: temporaryDataDir() }),
        cleanUp: () => dropDatabases(uri, [service]),
      };
    },
  ]);
} else {
  console.log('SKIPPED: the exposure ledger on MongoDB (MONGODB_URI is not set)');
}

describe.each(stores)('the exposure ledger on %s', (_name, open) => {
  let store: DocumentStore;
  let cleanUp: () => Promise<void>;

  beforeEach(async () => {
    ({ store, cleanUp } = await open());
  });

  afterEach(async () => {
    await store.close();
    await cleanUp();
  });

  const today = (): string => new Date().toISOString().slice(0, 10);

  it('finds what any ledger over the same store recorded, and nothing else', async () => {
    const one = await ExposureLedger.open(store);
    const other = await ExposureLedger.open(store);
    const a = `exposure-${today()}-a`;
    const b = `exposure-${today()}-b`;
    expect([...(await other.alreadyPublished([a, b]))]).toEqual([]);

    await one.published([a, a]);
    expect([...(await other.alreadyPublished([a, b]))]).toEqual([a]);
    // Recording again (a retried round) changes nothing.
    await other.published([a, b]);
    expect([...(await one.alreadyPublished([b, a, 'unrelated'])).values()].sort()).toEqual([a, b]);
  });

  it("keeps yesterday's exposures (an apply may come a day late), not older ones", async () => {
    const ledger = await ExposureLedger.open(store);
    const day = (offset: number): string =>
      new Date(Date.now() + offset * 86_400_000).toISOString().slice(0, 10);
    const yesterday = `exposure-${day(-1)}-late`;
    const older = `exposure-${day(-3)}-old`;
    await ledger.published([yesterday, older]);
    expect([...(await ledger.alreadyPublished([yesterday, older]))]).toEqual([yesterday]);
  });
});
