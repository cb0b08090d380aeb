/**
 * While storage is unreachable, reads keep being served from memory and say how fresh they are
 * (`as_of` stops at the last sync), and writes fail with UNAVAILABLE; both recover with storage.
 * Storage that hangs instead holds one sync and one registry reload, not one more per tick.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import { UnavailableError } from '../../platform/src/errors';
import type { Collection, DocumentStore } from '../../platform/src/storage/collection';
import { failureOf } from './feature-store-api';
import { eventually, startHarness, type RunningHarness } from './support/feature-store-harness';
import { double, userEntity, userRow, users, userStatsView } from './support/fixtures';
import {
  gatedPair,
  gatedSecondReplica,
  gatedStore,
  storageGates,
  untilHeld,
} from './support/gated-store';
import { FeatureRegistry } from '../src/feature-registry';
import { OnlineViews } from '../src/online-views';

/** A store whose every operation throws UnavailableError while `down` is set, like an unreachable server. */
function switchable(): {
  wrap: (store: DocumentStore) => DocumentStore;
  setDown: (down: boolean) => void;
} {
  let down = false;
  const guard = <T extends object>(target: T): T =>
    new Proxy(target, {
      get(object, property, receiver) {
        const value: unknown = Reflect.get(object, property, receiver);
        if (typeof value !== 'function') return value;
        return (...args: unknown[]) => {
          if (down) throw new UnavailableError('storage is unreachable (test outage)');
          return (value as (...a: unknown[]) => unknown).apply(object, args);
        };
      },
    });
  return {
    setDown: (value) => {
      down = value;
    },
    wrap: (store) => ({
      kind: store.kind,
      collection: async <T extends { readonly id: string }>(
        spec: Parameters<DocumentStore['collection']>[0],
      ): Promise<Collection<T>> => guard<Collection<T>>(await store.collection<T>(spec)),
      ping: () => store.ping(),
      close: () => store.close(),
    }),
  };
}

describe('FeatureStore during a storage outage', () => {
  let harness: RunningHarness;
  const storage = switchable();

  beforeEach(async () => {
    storage.setDown(false);
    harness = await startHarness({ wrapStore: storage.wrap });
  });

  afterEach(async () => {
    storage.setDown(false);
    await harness.stop();
  });

  it('serves reads from memory with the as-of time and fails writes with UNAVAILABLE', async () => {
    await harness.client.applyEntity({ entity: userEntity, requestId: '' });
    await harness.client.applyFeatureView({
      featureView: userStatsView(),
      requestId: '',
      validateOnly: false,
    });
    await harness.client.writeFeatures({
      featureView: 'user_stats',
      rows: [userRow('u1', new Date(), { ctr: double(0.5) })],
      requestId: '',
    });
    await new Promise((resolve) => setTimeout(resolve, 300));
    storage.setDown(true);
    const outageStarted = Date.now();
    await new Promise((resolve) => setTimeout(resolve, 600));

    const read = await harness.client.getOnlineFeatures({
      features: ['user_stats:ctr'],
      entityRows: users('u1'),
      omitEventTimes: false,
    });
    expect(read.columns[0]?.values).toEqual([double(0.5)]);
    expect(read.metadata!.asOf!.getTime()).toBeLessThanOrEqual(outageStarted);
    expect(read.metadata!.readTime!.getTime()).toBeGreaterThan(outageStarted);

    const write = await failureOf(
      harness.client.writeFeatures({
        featureView: 'user_stats',
        rows: [userRow('u1', new Date(), { ctr: double(0.9) })],
        requestId: '',
      }),
    );
    expect(write.code).toBe(GrpcCode.UNAVAILABLE);
    const apply = await failureOf(
      harness.client.applyEntity({ entity: { ...userEntity, owner: 'x' }, requestId: '' }),
    );
    expect(apply.code).toBe(GrpcCode.UNAVAILABLE);

    storage.setDown(false);
    await eventually(async () => {
      const again = await harness.client.getOnlineFeatures({
        features: ['user_stats:ctr'],
        entityRows: users('u1'),
        omitEventTimes: false,
      });
      expect(again.metadata!.asOf!.getTime()).toBeGreaterThan(outageStarted);
    });
    await harness.client.writeFeatures({
      featureView: 'user_stats',
      rows: [userRow('u1', new Date(), { ctr: double(0.9) })],
      requestId: '',
    });
  });
});

it('a sync or registry reload that hangs in storage is not started again on each tick', async () => {
  const gates = storageGates();
  const harness = await startHarness({
    env: {
      TANDEM_FEATURESTORE_SYNC_INTERVAL: '20ms',
      TANDEM_FEATURESTORE_REGISTRY_RELOAD_INTERVAL: '20ms',
    },
    wrapStore: (store) => gatedStore(store, gates),
  });
  const syncs = jest.spyOn(OnlineViews.prototype, 'syncChanges');
  const reloads = jest.spyOn(FeatureRegistry.prototype, 'reload');
  const calls = () => [syncs.mock.calls.length, reloads.mock.calls.length];
  try {
    // Storage stops answering (a half-open connection): the next sync and reload hang.
    gates.stallReads = true;
    await eventually(async () => {
      await Promise.resolve();
      expect(gates.stalledReads).toBeGreaterThanOrEqual(2);
    });
    const whileHung = calls();
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(calls()).toEqual(whileHung);
    // Once storage answers, the ticks go on.
    gates.releaseStalledReads();
    await eventually(async () => {
      await Promise.resolve();
      const [syncsNow, reloadsNow] = calls();
      expect(syncsNow).toBeGreaterThan(whileHung[0]! + 2);
      expect(reloadsNow).toBeGreaterThan(whileHung[1]! + 2);
    });
  } finally {
    gates.releaseStalledReads();
    syncs.mockRestore();
    reloads.mockRestore();
    await harness.stop();
  }
});

/** The ctr of u1 as `replica` serves it. */
async function ctrOf(replica: RunningHarness): Promise<unknown> {
  const read = await replica.client.getOnlineFeatures({
    features: ['user_stats:ctr'],
    entityRows: users('u1'),
    omitEventTimes: true,
  });
  return read.columns[0]?.values[0];
}

describe('a write storage applied but answered with an error', () => {
  it('is read back, then served by the writer and announced to the other replicas', async () => {
    const { gates, first, second, stop } = await gatedPair();
    try {
      const t = Date.now() - 1_000;
      await first.client.writeFeatures({
        featureView: 'user_stats',
        rows: [userRow('u1', new Date(t), { ctr: double(0.1) })],
        requestId: '',
      });
      await eventually(async () => {
        expect(await ctrOf(second)).toEqual(double(0.1));
      });

      // The first read back fails too: the writer tries again.
      gates.loseNextWriteReply = true;
      gates.failRowReads = 1;
      const failed = await failureOf(
        first.client.writeFeatures({
          featureView: 'user_stats',
          rows: [userRow('u1', new Date(t + 1), { ctr: double(0.9) })],
          requestId: '',
        }),
      );
      expect(failed.code).toBe(GrpcCode.UNAVAILABLE);
      await eventually(async () => {
        expect(await ctrOf(first)).toEqual(double(0.9));
        expect(await ctrOf(second)).toEqual(double(0.9));
      });
      expect(gates.failRowReads).toBe(0);
    } finally {
      await stop();
    }
  }, 30_000);

  it('is announced before a stop that began meanwhile returns', async () => {
    const { gates, first, second } = await gatedSecondReplica();
    try {
      // Stored, but its change-log entry fails; the retry's entry is held at the gate.
      gates.failEntries = 1;
      const failed = await failureOf(
        second.client.writeFeatures({
          featureView: 'user_stats',
          rows: [userRow('u1', new Date(Date.now() - 1_000), { ctr: double(0.7) })],
          requestId: '',
        }),
      );
      expect(failed.code).toBe(GrpcCode.UNAVAILABLE);
      gates.holdNextEntry = true;
      await untilHeld(gates, 'entry');

      let stopped = false;
      const stopping = second.stop().then(() => {
        stopped = true;
      });
      await new Promise((resolve) => setTimeout(resolve, 300));
      // Otherwise the announcement would go on after its storage was closed.
      expect(stopped).toBe(false);
      gates.releaseEntry?.();
      await stopping;
      await eventually(async () => {
        expect(await ctrOf(first)).toEqual(double(0.7));
      });
    } finally {
      await second.stop().catch(() => undefined);
      await first.stop();
    }
  });

  it('does not let the writes refused in an outage push out stored rows waiting to be announced', async () => {
    const { gates, first, second, stop } = await gatedPair();
    try {
      const t = Date.now() - 1_000;
      // Stored, but its change-log entry fails: announced later.
      gates.failEntries = Number.MAX_SAFE_INTEGER;
      const unannounced = await failureOf(
        first.client.writeFeatures({
          featureView: 'user_stats',
          rows: [userRow('u1', new Date(t), { ctr: double(0.5) })],
          requestId: '',
        }),
      );
      expect(unannounced.code).toBe(GrpcCode.UNAVAILABLE);
      // Refused writes, each to be read back: many more than the writer keeps waiting (1,000),
      // for long enough that the stored rows' retries fall behind 1,000 of them.
      gates.failWrites = true;
      gates.failRowReads = Number.MAX_SAFE_INTEGER;
      const refuse = (i: number) =>
        failureOf(
          first.client.writeFeatures({
            featureView: 'user_stats',
            rows: [userRow(`other-${i}`, new Date(t), { ctr: double(0.1) })],
            requestId: '',
          }),
        );
      for (let i = 0; i < 3_000; i += 50) {
        await Promise.all(Array.from({ length: 50 }, (_, j) => refuse(i + j)));
      }
      gates.failWrites = false;
      gates.failRowReads = 0;
      gates.failEntries = 0;
      await eventually(async () => {
        expect(await ctrOf(second)).toEqual(double(0.5));
      }, 15_000);
    } finally {
      await stop();
    }
  }, 60_000);
});
