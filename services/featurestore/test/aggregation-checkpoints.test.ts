/**
 * Aggregation checkpoints on both storage adapters: what a replica writes is what it restores
 * after a restart, seen ids of every write included, and checkpoints written by earlier versions
 * (seen ids stored as arrays) still restore. A write that failed part-way, even after storage
 * took its header, never leaves a state restored with another write's seen ids.
 */
import { mkdtempSync } from 'node:fs';
import { BSON, MongoClient } from 'mongodb';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UnavailableError } from '../../platform/src/errors';
import type { DocumentStore } from '../../platform/src/storage/collection';
import { openEmbeddedStore } from '../../platform/src/storage/embedded-store';
import { openMongoStore } from '../../platform/src/storage/mongo-store';
import { describeWithMongo, mongodbUri, uniqueName } from '../../platform/test/support/integration';
import { overridingCollections } from '../../platform/test/support/wrapped-store';
import { ValueType } from '../src/domain/feature-values';
import {
  AggregationFunction,
  WindowAggregator,
  type WindowAggregatorOptions,
} from '../src/domain/window-aggregation';
import { AggregationCheckpoints } from '../src/store/aggregation-checkpoints';
import { playsCountOptions } from './support/fixtures';

const options = playsCountOptions();

/** How the next upsert of a checkpoint document of a kind fails (once). */
type Faults = Map<'header' | 'state' | 'seen', 'taken, then failed' | 'failed'>;

/** `store` whose checkpoint upserts fail as `faults` says: before, or after storage took them. */
function faulty(store: DocumentStore, faults: Faults): DocumentStore {
  return overridingCollections(store, (collection) => ({
    upsert: async (doc) => {
      const kind = (doc as unknown as { kind: 'header' | 'state' | 'seen' }).kind;
      const fault = faults.get(kind);
      faults.delete(kind);
      if (fault === 'failed') throw new UnavailableError('storage is unreachable (a blip)');
      const written = await collection.upsert(doc);
      if (fault === 'taken, then failed') throw new UnavailableError('no answer in time');
      return written;
    },
  }));
}

/**
 * `store` refusing, as MongoDB does, a document whose BSON is over 16 MiB (the embedded store
 * would take it).
 */
function mongoSized(store: DocumentStore): DocumentStore {
  return overridingCollections(store, (collection) => ({
    upsert: (doc) => {
      if (BSON.calculateObjectSize(doc) > 16 * 1024 * 1024) {
        return Promise.reject(new RangeError('the document is over 16 MiB'));
      }
      return collection.upsert(doc);
    },
  }));
}

function checkpointSuite(open: () => Promise<DocumentStore>): void {
  let store: DocumentStore;
  /** A replica of its own per test, as tests may share a database. */
  let replica: string;

  beforeEach(async () => {
    store = await open();
    replica = uniqueName('r');
  });

  afterEach(async () => {
    await store.close();
  });

  it('restores the last checkpoint written, with the seen ids of every write in order', async () => {
    const now = Date.now();
    const aggregator = new WindowAggregator(options);
    const writer = (await AggregationCheckpoints.open(store)).forOwner('item_plays', replica);
    aggregator.ingest({ eventId: 'e1', key: 'i1', eventTime: now, values: [undefined] }, now);
    await writer.write(aggregator.checkpoint(), [['e1', now + 600_000]], { missingKeys: 0 });
    aggregator.ingest({ eventId: 'e2', key: 'i1', eventTime: now, values: [undefined] }, now);
    aggregator.ingest({ eventId: 'e3', key: 'i2', eventTime: now, values: [undefined] }, now);
    await writer.write(
      aggregator.checkpoint(),
      [
        ['e2', now + 600_000],
        ['e3', now + 600_000],
      ],
      { missingKeys: 2 },
    );

    const restored = await (
      await AggregationCheckpoints.open(store)
    )
      .forOwner('item_plays', replica)
      .restore();

    expect(restored?.extraCounters).toEqual({ missingKeys: 2 });
    expect(restored?.checkpoint.seenEventIds).toEqual([
      ['e1', now + 600_000],
      ['e2', now + 600_000],
      ['e3', now + 600_000],
    ]);
    const again = WindowAggregator.restore(options, restored!.checkpoint);
    expect(again.read(['i1', 'i2'], now).values).toEqual([2, 1]);
    expect(
      again.ingest({ eventId: 'e2', key: 'i1', eventTime: now, values: [undefined] }, now),
    ).toBe('duplicate');
  });

  it('restores a checkpoint whose seen ids an earlier version stored as arrays', async () => {
    const now = Date.now();
    const aggregator = new WindowAggregator(options);
    aggregator.ingest({ eventId: 'old', key: 'i1', eventTime: now, values: [undefined] }, now);
    const documents = await store.collection<{ readonly id: string }>({
      name: 'aggregation_checkpoints',
      indexes: [{ fields: ['owner'] }],
      expireAtField: 'expiresAt',
    });
    const owner = `item_plays/${replica}`;
    await documents.upsert({
      id: `${owner}/state/1/0`,
      owner,
      kind: 'state',
      generation: 1,
      data: JSON.stringify({ ...aggregator.checkpoint(), seenEventIds: [] }),
    } as { readonly id: string });
    await documents.upsert({
      id: `${owner}/seen/000000000001`,
      owner,
      kind: 'seen',
      seenSequence: 1,
      ids: [['old', now + 600_000]],
      expiresAt: new Date(now + 660_000),
    } as { readonly id: string });
    await documents.upsert({
      id: owner,
      owner,
      kind: 'header',
      generation: 1,
      chunkCount: 1,
      seenSequence: 1,
      checkpointTime: new Date(now),
      extraCounters: {},
    } as { readonly id: string });

    const restored = await (
      await AggregationCheckpoints.open(store)
    )
      .forOwner('item_plays', replica)
      .restore();

    expect(restored?.checkpoint.seenEventIds).toEqual([['old', now + 600_000]]);
  });

  it('discards a checkpoint of an earlier view of the same name, seen ids and all', async () => {
    const now = Date.now();
    const checkpoints = await AggregationCheckpoints.open(store);
    const aggregator = new WindowAggregator(options);
    aggregator.ingest({ eventId: 'e1', key: 'i1', eventTime: now, values: [undefined] }, now);
    // The old view's replica writes its last checkpoint after the view was applied again.
    await checkpoints
      .forOwner('item_plays', replica, { registration: 1 })
      .write(aggregator.checkpoint(), [['e1', now + 600_000]], {});

    const recreated = checkpoints.forOwner('item_plays', replica, { registration: 2 });
    await expect(recreated.restore()).resolves.toBeUndefined();
    const rebuilt = new WindowAggregator(options);
    rebuilt.ingest({ eventId: 'e2', key: 'i2', eventTime: now, values: [undefined] }, now);
    await recreated.write(rebuilt.checkpoint(), [['e2', now + 600_000]], {});

    const restored = await checkpoints
      .forOwner('item_plays', replica, { registration: 2 })
      .restore();
    expect(restored?.checkpoint.seenEventIds).toEqual([['e2', now + 600_000]]);
    const again = WindowAggregator.restore(options, restored!.checkpoint);
    expect(again.read(['i1', 'i2'], now).values).toEqual([null, 1]);
  });

  it('restores each seen id once after a write that failed once its seen ids were stored', async () => {
    const now = Date.now();
    const until = now + 600_000;
    const faults: Faults = new Map();
    const capped = { maxSeenEventIds: 3 };
    const writer = (await AggregationCheckpoints.open(faulty(store, faults))).forOwner(
      'item_plays',
      replica,
      capped,
    );
    const aggregator = new WindowAggregator(options);
    const play = (id: string) =>
      aggregator.ingest({ eventId: id, key: 'i1', eventTime: now, values: [undefined] }, now);
    play('d1');
    play('d2');
    await writer.write(
      aggregator.checkpoint(),
      [
        ['d1', until],
        ['d2', until],
      ],
      {},
    );
    play('a1');
    faults.set('header', 'failed');
    await expect(writer.write(aggregator.checkpoint(), [['a1', until]], {})).rejects.toThrow();
    // The failed write's ids come again in the next.
    play('a2');
    await writer.write(
      aggregator.checkpoint(),
      [
        ['a1', until],
        ['a2', until],
      ],
      {},
    );

    const restored = await (
      await AggregationCheckpoints.open(store)
    )
      .forOwner('item_plays', replica, capped)
      .restore();
    // Four ids for three places: the oldest goes, and d2, published again, is a duplicate.
    expect(restored?.checkpoint.seenEventIds.map(([id]) => id)).toEqual(['d2', 'a1', 'a2']);
    expect(restored?.checkpoint.counters.dedupeEvictions).toBe(1);
    const again = WindowAggregator.restore(options, restored!.checkpoint);
    again.ingest({ eventId: 'd2', key: 'i1', eventTime: now, values: [undefined] }, now);
    expect(again.read(['i1'], now).values).toEqual([4]);
  });

  /** Writes a checkpoint of one event; returns the checkpoints and their stored documents. */
  async function oneEventCheckpoint() {
    const now = Date.now();
    const checkpoints = await AggregationCheckpoints.open(store);
    const aggregator = new WindowAggregator(options);
    aggregator.ingest({ eventId: 'e1', key: 'i1', eventTime: now, values: [undefined] }, now);
    await checkpoints
      .forOwner('item_plays', replica)
      .write(aggregator.checkpoint(), [['e1', now + 600_000]], {});
    const documents = await store.collection<{
      readonly id: string;
      readonly data?: string;
      readonly idsJson?: string;
    }>({
      name: 'aggregation_checkpoints',
      indexes: [{ fields: ['owner'] }],
      expireAtField: 'expiresAt',
    });
    return {
      checkpoints,
      documents,
      chunk: `item_plays/${replica}/state/1/0`,
      seen: `item_plays/${replica}/seen/000000000001`,
    };
  }

  it('discards a checkpoint part of whose state is missing, rather than failing to start', async () => {
    const { checkpoints, documents, chunk } = await oneEventCheckpoint();
    await documents.delete(chunk);

    await expect(checkpoints.forOwner('item_plays', replica).restore()).resolves.toBeUndefined();
    await expect(checkpoints.forOwner('item_plays', replica).restore()).resolves.toBeUndefined();
  });

  it('restores a state and seen ids of one write after writes that failed part-way', async () => {
    const now = Date.now();
    const until = now + 600_000;
    const faults: Faults = new Map();
    const writer = (await AggregationCheckpoints.open(faulty(store, faults))).forOwner(
      'item_plays',
      replica,
    );
    const aggregator = new WindowAggregator(options);
    aggregator.ingest({ eventId: 'e1', key: 'i1', eventTime: now, values: [undefined] }, now);
    // Storage takes the header but answers as failed (a timeout).
    faults.set('header', 'taken, then failed');
    await expect(writer.write(aggregator.checkpoint(), [['e1', until]], {})).rejects.toThrow();
    // The next write (its events not acked, e1 with them) fails on its seen ids.
    aggregator.ingest({ eventId: 'e2', key: 'i1', eventTime: now, values: [undefined] }, now);
    faults.set('seen', 'failed');
    const both: [string, number][] = [
      ['e1', until],
      ['e2', until],
    ];
    await expect(writer.write(aggregator.checkpoint(), both, {})).rejects.toThrow();

    // The header storage took is current, and its state counts e1 alone, as its seen ids say:
    // e2, delivered again, is counted once.
    const restored = await (
      await AggregationCheckpoints.open(store)
    )
      .forOwner('item_plays', replica)
      .restore();
    expect(restored?.checkpoint.seenEventIds.map(([id]) => id)).toEqual(['e1']);
    const again = WindowAggregator.restore(options, restored!.checkpoint);
    expect(again.read(['i1'], now).values).toEqual([1]);
  });

  it('restores a state larger than one stored piece unchanged when a piece would end inside a surrogate pair', async () => {
    // A state is stored in pieces of 4,000,000 UTF-16 code units; a cut between the two halves of
    // a pair (an emoji) would leave lone surrogates, which storage keeps as U+FFFD.
    const piece = 4_000_000;
    const titles: WindowAggregatorOptions = {
      aggregations: [
        {
          feature: 'last_title',
          function: AggregationFunction.Last,
          windowMs: 3_600_000,
          bucketMs: 60_000,
          valueType: ValueType.String,
        },
      ],
      allowedLatenessMs: 3_600_000,
    };
    const now = Date.now();
    const titled = (padding: number): WindowAggregator => {
      const aggregator = new WindowAggregator(titles);
      const title = `${'x'.repeat(padding)}🎵 song`;
      aggregator.ingest({ eventId: 'e1', key: 'i1', eventTime: now, values: [title] }, now);
      return aggregator;
    };
    const stateJson = (aggregator: WindowAggregator): string =>
      JSON.stringify({ ...aggregator.checkpoint({ seenEventIds: false }), seenEventIds: [] });
    const aggregator = titled(piece - 1 - stateJson(titled(0)).indexOf('🎵'));
    expect(stateJson(aggregator).charCodeAt(piece - 1)).toBe('🎵'.charCodeAt(0));
    const title = aggregator.read(['i1'], now).values[0];

    const checkpoints = await AggregationCheckpoints.open(store);
    await checkpoints
      .forOwner('titles', replica)
      .write(aggregator.checkpoint({ seenEventIds: false }), [['e1', now + 3_600_000]], {});
    const restored = await checkpoints.forOwner('titles', replica).restore();
    const again = WindowAggregator.restore(titles, restored!.checkpoint);
    expect(again.read(['i1'], now).values[0]).toBe(title);
  });

  it('stores the seen ids of a write too many for one document, and restores every one', async () => {
    // A round holds the ids of up to TANDEM_FEATURESTORE_AGGREGATION_IN_FLIGHT events (at most
    // 1,000,000), more after failed writes: 300,000 take over 16 MiB, which MongoDB refuses in
    // one document, and every checkpoint after would fail.
    const now = Date.now();
    const ids: [string, number][] = Array.from({ length: 300_000 }, (_, i) => [
      `${String(i).padStart(8, '0')}-${'e'.repeat(50)}`,
      now + 600_000,
    ]);
    const checkpoints = await AggregationCheckpoints.open(mongoSized(store));
    await checkpoints
      .forOwner('item_plays', replica)
      .write(new WindowAggregator(options).checkpoint(), ids, {});

    const restored = await checkpoints.forOwner('item_plays', replica).restore();
    expect(restored?.checkpoint.seenEventIds).toEqual(ids);
  });

  it('keeps the seen-id documents a restore reads, rather than each until it expires', async () => {
    // A restore reads back the newest ids up to the cap. Kept until their ids' horizon (the
    // longest window, up to 30 days), the documents of a busy view piled up far past that, in
    // storage and in what every restart read.
    const now = Date.now();
    const idsOf = (write: number): [string, number][] =>
      Array.from({ length: 5 }, (_, i) => [`e${write}-${i}`, now + 600_000]);
    const checkpoints = await AggregationCheckpoints.open(store);
    const state = new WindowAggregator(options).checkpoint({ seenEventIds: false });
    const writer = checkpoints.forOwner('item_plays', replica, { maxSeenEventIds: 10 });
    for (let write = 0; write < 4; write++) await writer.write(state, idsOf(write), {});
    // And after a restart.
    const restarted = checkpoints.forOwner('item_plays', replica, { maxSeenEventIds: 10 });
    await restarted.restore();
    for (let write = 4; write < 6; write++) await restarted.write(state, idsOf(write), {});

    const documents = await store.collection<{ readonly id: string; readonly kind?: string }>({
      name: 'aggregation_checkpoints',
      indexes: [{ fields: ['owner'] }],
      expireAtField: 'expiresAt',
    });
    let seenDocuments = 0;
    for await (const { doc } of documents.scan({ owner: `item_plays/${replica}` })) {
      if (doc.kind === 'seen') seenDocuments++;
    }
    expect(seenDocuments).toBe(2);
    const restored = await checkpoints
      .forOwner('item_plays', replica, { maxSeenEventIds: 10 })
      .restore();
    expect(restored?.checkpoint.seenEventIds).toEqual([...idsOf(4), ...idsOf(5)]);
  });

  it('keeps the seen-id documents a restore reads when a failed write left a copy of its ids', async () => {
    // A failed write's seen ids, stored, come again in the next write; when deleting the first
    // copy fails too, both copies are restored. Counted twice, they made the newest documents
    // look like they held the cap, and the next write deleted ids a restore still returned.
    const now = Date.now();
    const idsOf = (name: string, count: number): [string, number][] =>
      Array.from({ length: count }, (_, i) => [`${name}${i}`, now + 600_000]);
    const faults: Faults = new Map();
    let deletesFail = false;
    const flaky = overridingCollections(faulty(store, faults), (collection) => ({
      delete: (id: string) =>
        deletesFail
          ? Promise.reject(new UnavailableError('storage is unreachable (a blip)'))
          : collection.delete(id),
    }));
    const checkpoints = await AggregationCheckpoints.open(flaky);
    const state = new WindowAggregator(options).checkpoint({ seenEventIds: false });
    const writer = checkpoints.forOwner('item_plays', replica, { maxSeenEventIds: 10 });
    await writer.write(state, idsOf('a', 5), {});
    faults.set('header', 'failed');
    await expect(writer.write(state, idsOf('b', 3), {})).rejects.toThrow(UnavailableError);
    deletesFail = true;
    await writer.write(state, [...idsOf('b', 3), ...idsOf('c', 2)], {});
    deletesFail = false;
    const restarted = checkpoints.forOwner('item_plays', replica, { maxSeenEventIds: 10 });
    await restarted.restore();
    await restarted.write(state, idsOf('d', 2), {});

    const restored = await checkpoints
      .forOwner('item_plays', replica, { maxSeenEventIds: 10 })
      .restore();
    expect(restored?.checkpoint.seenEventIds).toEqual([
      ...idsOf('a', 5).slice(2),
      ...idsOf('b', 3),
      ...idsOf('c', 2),
      ...idsOf('d', 2),
    ]);
  });

  it("deletes a view's checkpoints on every replica, reading no other view's", async () => {
    const read: string[] = [];
    const watched = overridingCollections(store, (collection) => ({
      list: async (listOptions) => {
        const page = await collection.list(listOptions);
        read.push(...page.items.map(({ doc }) => doc.id));
        return page;
      },
      scan: async function* (where) {
        for await (const item of collection.scan(where)) {
          read.push(item.doc.id);
          yield item;
        }
      },
    }));
    const checkpoints = await AggregationCheckpoints.open(watched);
    const state = new WindowAggregator(options).checkpoint({ seenEventIds: false });
    const ids: [string, number][] = [['e1', Date.now() + 600_000]];
    // Names that sort on either side of it, and one it is a prefix of.
    const views = ['item_play', 'item_plays', 'item_plays_x', 'item_playt'];
    for (const view of views) {
      for (const other of [replica, `${replica}-2`]) {
        await checkpoints.forOwner(view, other).write(state, ids, {});
      }
    }
    read.length = 0;
    await checkpoints.deleteView('item_plays');
    const readDeleting = [...read];

    for (const view of views) {
      for (const other of [replica, `${replica}-2`]) {
        const restored = await checkpoints.forOwner(view, other).restore();
        if (view === 'item_plays') expect(restored).toBeUndefined();
        else expect(restored?.checkpoint.seenEventIds).toEqual(ids);
      }
    }
    // Its own (a header, a state piece and a seen-id document per replica), and at most one page
    // of four past them (the page that shows the run ended): not the other views' twenty-four.
    // (Tests may share a database: other tests' replicas have checkpoints of the view too.)
    expect(readDeleting.filter((id) => id.startsWith(`item_plays/${replica}`))).toHaveLength(6);
    expect(readDeleting.filter((id) => !id.startsWith('item_plays/')).length).toBeLessThanOrEqual(
      4,
    );
  });

  it('discards a checkpoint whose state cannot be read, rather than failing to start', async () => {
    const { checkpoints, documents, chunk } = await oneEventCheckpoint();
    const stored = await documents.get(chunk);
    await documents.upsert({ ...stored!.doc, data: stored!.doc.data!.slice(0, 10) });

    await expect(checkpoints.forOwner('item_plays', replica).restore()).resolves.toBeUndefined();
  });

  it('discards a checkpoint whose seen ids cannot be read, rather than failing to start', async () => {
    // Failing, the view would never be served (every load failing) nor take an event.
    const { checkpoints, documents, seen } = await oneEventCheckpoint();
    const stored = await documents.get(seen);
    await documents.upsert({ ...stored!.doc, idsJson: stored!.doc.idsJson!.slice(0, 10) });

    await expect(checkpoints.forOwner('item_plays', replica).restore()).resolves.toBeUndefined();
  });
}

describe('aggregation checkpoints on the embedded store', () => {
  checkpointSuite(() =>
    openEmbeddedStore({ path: mkdtempSync(join(tmpdir(), 'tandem-checkpoints-')) }),
  );
});

describeWithMongo('aggregation checkpoints on MongoDB', () => {
  const database = uniqueName('tandem_checkpoints_test');

  afterAll(async () => {
    const client = new MongoClient(mongodbUri!);
    try {
      await client.db(database).dropDatabase();
    } finally {
      await client.close();
    }
  });

  checkpointSuite(() => openMongoStore({ uri: mongodbUri!, database }));
});
