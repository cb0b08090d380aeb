/**
 * The storage contract: what every `DocumentStore` adapter guarantees. Each adapter's test file
 * runs it once (`runCollectionContract`), so MongoDB and the embedded store are held to exactly
 * the same behaviour.
 */
import {
  AbortedError,
  AlreadyExistsError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
} from '../../src/errors';
import type {
  Collection,
  CollectionSpec,
  DocumentStore,
  Versioned,
  Where,
} from '../../src/storage/collection';

interface Item {
  readonly id: string;
  readonly group?: string | null;
  readonly rank?: number;
  readonly note?: string | null;
}

interface Account {
  readonly id: string;
  readonly email: string;
}

interface FeatureValue {
  readonly id: string;
  readonly value: number;
  readonly eventTime: number;
}

/** A document versioned by a string, written before it had one (`change` absent). */
interface Marker {
  readonly id: string;
  readonly ttl: number;
  readonly change?: string;
}

interface Counter {
  readonly id: string;
  readonly plays?: number;
  readonly skips?: number;
  readonly firstCaller?: number;
  readonly label?: string;
}

interface Session {
  readonly id: string;
  readonly group: string;
  readonly expiresAt?: Date | null;
}

interface Blob {
  readonly id: string;
  readonly createdAt: Date;
  readonly payload: Uint8Array;
  readonly nested: { readonly at: Date; readonly bytes: Uint8Array; readonly tags: string[] };
}

const ids = (items: readonly Versioned<{ readonly id: string }>[]): string[] =>
  items.map((item) => item.doc.id);

/** `n` ids that sort in creation order: `prefix-0000`, `prefix-0001`, … */
const sequence = (prefix: string, n: number): string[] =>
  Array.from({ length: n }, (_, i) => `${prefix}-${String(i).padStart(4, '0')}`);

async function collect<T>(iterable: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of iterable) out.push(item);
  return out;
}

/** Runs `tasks` with at most `width` in flight, preserving result order. */
async function inBatches<R>(tasks: (() => Promise<R>)[], width: number): Promise<R[]> {
  const results: R[] = [];
  for (let i = 0; i < tasks.length; i += width) {
    results.push(...(await Promise.all(tasks.slice(i, i + width).map((task) => task()))));
  }
  return results;
}

/**
 * Declares the contract suite for one adapter. `openStore` is called once; the store is closed
 * after the suite. Every test uses its own collection, so tests never see each other's data.
 */
export function runCollectionContract(name: string, openStore: () => Promise<DocumentStore>): void {
  describe(`${name}: the collection contract`, () => {
    let store: DocumentStore;
    let collections = 0;

    beforeAll(async () => {
      store = await openStore();
    });

    afterAll(async () => {
      await store.close();
    });

    function fresh<T extends { readonly id: string }>(
      spec: Omit<CollectionSpec, 'name'> = {},
    ): Promise<Collection<T>> {
      collections += 1;
      return store.collection<T>({ name: `contract_${collections}`, ...spec });
    }

    describe('reads and writes', () => {
      it('stores an inserted document at version 1 and reads it back', async () => {
        const items = await fresh<Item>();
        const inserted = await items.insert({ id: 'a', group: 'g', rank: 3 });
        expect(inserted).toEqual({ doc: { id: 'a', group: 'g', rank: 3 }, version: 1 });
        expect(await items.get('a')).toEqual({ doc: { id: 'a', group: 'g', rank: 3 }, version: 1 });
        expect(await items.get('missing')).toBeUndefined();
      });

      it('returns only the documents that exist from getMany', async () => {
        const items = await fresh<Item>();
        await items.insert({ id: 'a', rank: 1 });
        await items.insert({ id: 'b', rank: 2 });
        const found = await items.getMany(['a', 'missing', 'b', 'a']);
        expect([...found.keys()].sort()).toEqual(['a', 'b']);
        expect(found.get('b')).toEqual({ doc: { id: 'b', rank: 2 }, version: 1 });
        expect((await items.getMany([])).size).toBe(0);
      });

      it('refuses to insert an id that is taken', async () => {
        const items = await fresh<Item>();
        await items.insert({ id: 'a', rank: 1 });
        await expect(items.insert({ id: 'a', rank: 2 })).rejects.toBeInstanceOf(AlreadyExistsError);
        expect((await items.get('a'))?.doc.rank).toBe(1);
      });

      it('replaces a document at its current version and bumps the version', async () => {
        const items = await fresh<Item>();
        await items.insert({ id: 'a', rank: 1, note: 'dropped by the replace' });
        const replaced = await items.replace({ id: 'a', rank: 2 }, 1);
        expect(replaced).toEqual({ doc: { id: 'a', rank: 2 }, version: 2 });
        expect(await items.get('a')).toEqual({ doc: { id: 'a', rank: 2 }, version: 2 });
      });

      it('aborts a replace at a stale version and keeps the stored document', async () => {
        const items = await fresh<Item>();
        await items.insert({ id: 'a', rank: 1 });
        await items.replace({ id: 'a', rank: 2 }, 1);
        await expect(items.replace({ id: 'a', rank: 3 }, 1)).rejects.toBeInstanceOf(AbortedError);
        expect(await items.get('a')).toEqual({ doc: { id: 'a', rank: 2 }, version: 2 });
      });

      it('reports a replace of a missing document as not found', async () => {
        const items = await fresh<Item>();
        await expect(items.replace({ id: 'nope', rank: 1 }, 1)).rejects.toBeInstanceOf(
          NotFoundError,
        );
        expect(await items.get('nope')).toBeUndefined();
      });

      it('upserts: creates at version 1, then replaces the whole document at the next version', async () => {
        const items = await fresh<Item>();
        expect(await items.upsert({ id: 'a', rank: 1, note: 'first' })).toEqual({
          doc: { id: 'a', rank: 1, note: 'first' },
          version: 1,
        });
        expect(await items.upsert({ id: 'a', rank: 2 })).toEqual({
          doc: { id: 'a', rank: 2 },
          version: 2,
        });
        expect(await items.get('a')).toEqual({ doc: { id: 'a', rank: 2 }, version: 2 });
      });

      it('deletes without a version, and reports false when nothing was there', async () => {
        const items = await fresh<Item>();
        await items.insert({ id: 'a' });
        expect(await items.delete('a')).toBe(true);
        expect(await items.get('a')).toBeUndefined();
        expect(await items.delete('a')).toBe(false);
      });

      it('deletes at the current version and aborts at a stale one', async () => {
        const items = await fresh<Item>();
        await items.insert({ id: 'a', rank: 1 });
        await items.replace({ id: 'a', rank: 2 }, 1);
        await expect(items.delete('a', 1)).rejects.toBeInstanceOf(AbortedError);
        expect(await items.get('a')).toBeDefined();
        expect(await items.delete('a', 2)).toBe(true);
        expect(await items.get('a')).toBeUndefined();
        expect(await items.delete('a', 2)).toBe(false);
      });

      it('keeps strings that look like operators as plain data', async () => {
        const items = await fresh<Item>();
        await items.upsert({ id: 'a', note: '$rank' });
        expect((await items.get('a'))?.doc.note).toBe('$rank');
      });
    });

    describe('invalid documents', () => {
      it('rejects reserved field names, non-finite numbers and non-data values, naming each field', async () => {
        const items = await fresh<Record<string, unknown> & { id: string }>();
        const bad = { id: 'a', _secret: 1, $op: 2, ratio: Number.NaN, callback: () => 1 };
        const error = await items.insert(bad).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(InvalidArgumentError);
        const fields = (error as InvalidArgumentError).violations.map((v) => v.field).sort();
        expect(fields).toEqual(['$op', '_secret', 'callback', 'ratio']);
        expect(await items.get('a')).toBeUndefined();
      });

      it('rejects an empty id and a list without a positive limit', async () => {
        const items = await fresh<Item>();
        await expect(items.insert({ id: '' })).rejects.toBeInstanceOf(InvalidArgumentError);
        await expect(items.list({ limit: 0 })).rejects.toBeInstanceOf(InvalidArgumentError);
      });

      it('finds nothing under an id no document can have, where it refuses to store one', async () => {
        const items = await fresh<Item>();
        await items.insert({ id: 'kept' });
        const long = 'x'.repeat(2_000);
        await expect(items.insert({ id: long })).rejects.toBeInstanceOf(InvalidArgumentError);
        expect(await items.get(long)).toBeUndefined();
        expect(await items.get('')).toBeUndefined();
        expect([...(await items.getMany([long, 'kept', ''])).keys()]).toEqual(['kept']);
        expect(await items.delete(long)).toBe(false);
        expect(await items.delete(long, 1)).toBe(false);
      });
    });

    describe('listing, scanning and counting', () => {
      it('pages through an indexed filter in id order, with no next id on the last page', async () => {
        const items = await fresh<Item>({ indexes: [{ fields: ['group'] }] });
        const all = sequence('item', 23);
        for (const [i, id] of all.entries()) {
          await items.insert({ id, group: i % 2 === 0 ? 'even' : 'odd', rank: i });
        }
        const even = all.filter((_, i) => i % 2 === 0); // 12 documents
        const seen: string[] = [];
        let afterId: string | undefined;
        let pages = 0;
        do {
          const page = await items.list({ where: { group: 'even' }, afterId, limit: 5 });
          seen.push(...ids(page.items));
          afterId = page.nextAfterId;
          pages += 1;
        } while (afterId !== undefined);
        expect(seen).toEqual(even);
        expect(pages).toBe(3);

        // A last page that is exactly full still says there is nothing after it.
        const exact = await items.list({ where: { group: 'even' }, afterId: even[5], limit: 6 });
        expect(ids(exact.items)).toEqual(even.slice(6));
        expect(exact.nextAfterId).toBeUndefined();
      });

      it('lists every document in id order without a filter', async () => {
        const items = await fresh<Item>();
        for (const id of ['c', 'a', 'e', 'b', 'd']) await items.insert({ id });
        const first = await items.list({ limit: 2 });
        expect(ids(first.items)).toEqual(['a', 'b']);
        expect(first.nextAfterId).toBe('b');
        const rest = await items.list({ afterId: 'b', limit: 10 });
        expect(ids(rest.items)).toEqual(['c', 'd', 'e']);
        expect(rest.nextAfterId).toBeUndefined();
      });

      it('matches a null filter against documents without the field', async () => {
        const items = await fresh<Item>({ indexes: [{ fields: ['group'] }] });
        await items.insert({ id: 'a', group: 'x' });
        await items.insert({ id: 'b' });
        await items.insert({ id: 'c', group: null });
        expect(ids((await items.list({ where: { group: null }, limit: 10 })).items)).toEqual([
          'b',
          'c',
        ]);
        expect(await items.count({ group: null })).toBe(2);
      });

      it('filters on a compound index and on a prefix of it', async () => {
        const items = await fresh<Item>({ indexes: [{ fields: ['group', 'rank'] }] });
        await items.insert({ id: 'd', group: 'g', rank: 1 });
        await items.insert({ id: 'c', group: 'g', rank: 2 });
        await items.insert({ id: 'b', group: 'h', rank: 1 });
        await items.insert({ id: 'a', group: 'g', rank: 1 });
        expect(
          ids((await items.list({ where: { group: 'g', rank: 1 }, limit: 10 })).items),
        ).toEqual(['a', 'd']);
        expect(ids((await items.list({ where: { group: 'g' }, limit: 10 })).items)).toEqual([
          'a',
          'c',
          'd',
        ]);
        expect(
          ids((await items.list({ where: { group: 'g' }, afterId: 'a', limit: 1 })).items),
        ).toEqual(['c']);
      });

      it('filters on fields beyond the index, a null one matching documents without the field', async () => {
        // Indexed on group alone, and on rank then group: neither covers the whole filter.
        const items = await fresh<Item>({
          indexes: [{ fields: ['group'] }, { fields: ['rank', 'group'] }],
        });
        await items.insert({ id: 'e', group: 'g', rank: 1, note: 'x' });
        await items.insert({ id: 'd', group: 'g', rank: 1 });
        await items.insert({ id: 'c', group: 'g', rank: 2, note: 'x' });
        await items.insert({ id: 'b', group: 'h', rank: 1, note: 'x' });
        await items.insert({ id: 'a', group: 'g', rank: 1, note: null });
        const listed = async (where: Where, afterId?: string) =>
          ids((await items.list({ where, afterId, limit: 10 })).items);
        expect(await listed({ group: 'g', note: 'x' })).toEqual(['c', 'e']);
        expect(await listed({ group: 'g', note: null })).toEqual(['a', 'd']);
        expect(await listed({ group: 'g', note: null }, 'a')).toEqual(['d']);
        expect(await listed({ rank: 1, group: 'g', note: 'x' })).toEqual(['e']);
        expect(await listed({ rank: 1, note: 'x' })).toEqual(['b', 'e']);
        expect(await items.count({ group: 'g', note: 'x' })).toBe(2);
        expect(ids(await collect(items.scan({ group: 'g', note: null })))).toEqual(['a', 'd']);
        expect(await items.deleteWhere({ group: 'g', note: null })).toBe(2);
        expect(ids(await collect(items.scan()))).toEqual(['b', 'c', 'e']);
      });

      it('deletes, across batches, documents matching a filter beyond the index among others', async () => {
        const items = await fresh<Item>({ indexes: [{ fields: ['group'] }] });
        // 1,200 of each, interleaved: more than one deletion batch (1,000) of either.
        const all = sequence('doc', 2400);
        for (const [i, id] of all.entries()) {
          await items.insert({ id, group: 'g', ...(i % 2 === 0 ? { note: 'x' } : {}) });
        }
        expect(await items.deleteWhere({ group: 'g', note: null })).toBe(1200);
        expect(await items.count({ group: 'g' })).toBe(1200);
        expect(await items.deleteWhere({ group: 'g', note: 'x' })).toBe(1200);
        expect(await items.count()).toBe(0);
      });

      it('scans thousands of documents in id order across batches, with and without a filter', async () => {
        const items = await fresh<Item>({ indexes: [{ fields: ['group'] }] });
        const all = sequence('doc', 2600);
        await inBatches(
          all.map(
            (id, i) => () => items.insert({ id, group: i % 3 === 0 ? 'third' : 'rest', rank: i }),
          ),
          100,
        );
        const scanned = await collect(items.scan());
        expect(scanned).toHaveLength(2600);
        expect(ids(scanned)).toEqual(all);
        const thirds = await collect(items.scan({ group: 'third' }));
        expect(ids(thirds)).toEqual(all.filter((_, i) => i % 3 === 0));
        expect(await items.count()).toBe(2600);
        expect(await items.count({ group: 'third' })).toBe(867);
      });

      it('deletes every document matching a filter, across batches, and nothing else', async () => {
        const items = await fresh<Item>({ indexes: [{ fields: ['group'] }] });
        const all = sequence('doc', 2300);
        await inBatches(
          all.map((id, i) => () => items.insert({ id, group: i % 2 === 0 ? 'gone' : 'kept' })),
          100,
        );
        expect(await items.deleteWhere({ group: 'gone' })).toBe(1150);
        expect(await items.count({ group: 'gone' })).toBe(0);
        expect(ids(await collect(items.scan()))).toEqual(all.filter((_, i) => i % 2 === 1));
        expect(await items.deleteWhere({ group: 'gone' })).toBe(0);
        await expect(items.deleteWhere({})).rejects.toBeInstanceOf(InvalidArgumentError);
        expect(await items.count()).toBe(1150);
      });

      it('counts live documents, with and without a filter', async () => {
        const items = await fresh<Item>({ indexes: [{ fields: ['group'] }] });
        expect(await items.count()).toBe(0);
        await items.insert({ id: 'a', group: 'x' });
        await items.insert({ id: 'b', group: 'y' });
        await items.insert({ id: 'c', group: 'x' });
        await items.delete('c');
        expect(await items.count()).toBe(2);
        expect(await items.count({ group: 'x' })).toBe(1);
        expect(await items.count({ group: 'z' })).toBe(0);
      });
    });

    describe('unique indexes', () => {
      it('refuses a second document with the same unique value, on insert and on replace', async () => {
        const accounts = await fresh<Account>({ indexes: [{ fields: ['email'], unique: true }] });
        await accounts.insert({ id: 'a', email: 'ana@example.com' });
        await accounts.insert({ id: 'b', email: 'bo@example.com' });
        await expect(accounts.insert({ id: 'c', email: 'ana@example.com' })).rejects.toBeInstanceOf(
          AlreadyExistsError,
        );
        await expect(
          accounts.replace({ id: 'b', email: 'ana@example.com' }, 1),
        ).rejects.toBeInstanceOf(AlreadyExistsError);
        await expect(accounts.upsert({ id: 'c', email: 'bo@example.com' })).rejects.toBeInstanceOf(
          AlreadyExistsError,
        );
        expect(await accounts.get('c')).toBeUndefined();
        expect(await accounts.get('b')).toEqual({
          doc: { id: 'b', email: 'bo@example.com' },
          version: 1,
        });
      });

      it('frees a unique value when its document changes or goes', async () => {
        const accounts = await fresh<Account>({ indexes: [{ fields: ['email'], unique: true }] });
        await accounts.insert({ id: 'a', email: 'one@example.com' });
        await accounts.replace({ id: 'a', email: 'two@example.com' }, 1);
        await accounts.insert({ id: 'b', email: 'one@example.com' });
        await accounts.delete('a');
        await accounts.insert({ id: 'c', email: 'two@example.com' });
        expect(await accounts.count()).toBe(2);
        expect(
          ids((await accounts.list({ where: { email: 'two@example.com' }, limit: 5 })).items),
        ).toEqual(['c']);
      });
    });

    describe('upsertIfNewer', () => {
      it('writes newer values, skips older and equal ones, and reports each outcome', async () => {
        const features = await fresh<FeatureValue>();
        await features.upsertIfNewer(
          [
            { id: 'a', value: 1, eventTime: 100 },
            { id: 'b', value: 1, eventTime: 100 },
            { id: 'c', value: 1, eventTime: 100 },
          ],
          'eventTime',
        );
        const outcomes = await features.upsertIfNewer(
          [
            { id: 'a', value: 2, eventTime: 200 }, // newer
            { id: 'b', value: 2, eventTime: 50 }, // older
            { id: 'c', value: 2, eventTime: 100 }, // equal
            { id: 'd', value: 2, eventTime: 1 }, // new id
          ],
          'eventTime',
        );
        expect(outcomes).toEqual(['updated', 'skipped', 'skipped', 'inserted']);
        const stored = await features.getMany(['a', 'b', 'c', 'd']);
        expect(stored.get('a')).toEqual({ doc: { id: 'a', value: 2, eventTime: 200 }, version: 2 });
        expect(stored.get('b')).toEqual({ doc: { id: 'b', value: 1, eventTime: 100 }, version: 1 });
        expect(stored.get('c')).toEqual({ doc: { id: 'c', value: 1, eventTime: 100 }, version: 1 });
        expect(stored.get('d')).toEqual({ doc: { id: 'd', value: 2, eventTime: 1 }, version: 1 });
        expect(await features.upsertIfNewer([], 'eventTime')).toEqual([]);
      });

      it('ends at the newest value when 50 writers race on one id', async () => {
        const features = await fresh<FeatureValue>();
        // Event times 1..50 in a scrambled order (7 is coprime with 50).
        const times = Array.from({ length: 50 }, (_, i) => ((i * 7) % 50) + 1);
        const outcomes = await Promise.all(
          times.map((eventTime) =>
            features.upsertIfNewer([{ id: 'hot', value: eventTime * 10, eventTime }], 'eventTime'),
          ),
        );
        const flat = outcomes.flat();
        expect(flat.filter((outcome) => outcome === 'inserted')).toHaveLength(1);
        const written = flat.filter((outcome) => outcome !== 'skipped').length;
        const stored = await features.get('hot');
        expect(stored?.doc).toEqual({ id: 'hot', value: 500, eventTime: 50 });
        expect(stored?.version).toBe(written);
      });

      it('compares strings in byte order and replaces a stored document without the field', async () => {
        const markers = await fresh<Marker>();
        await markers.upsert({ id: 'legacy', ttl: 1 });
        expect(
          await markers.upsertIfNewer(
            [
              { id: 'legacy', ttl: 2, change: '0001:0002' },
              { id: 'marker', ttl: 1, change: '0001:0010' },
            ],
            'change',
          ),
        ).toEqual(['updated', 'inserted']);
        expect(
          await markers.upsertIfNewer(
            [
              { id: 'marker', ttl: 2, change: '0001:0009' }, // older: '0009' sorts before '0010'
              { id: 'legacy', ttl: 3, change: '0002:0000' }, // newer in the first part
            ],
            'change',
          ),
        ).toEqual(['skipped', 'updated']);
        // Byte order, not locale order ('B' < 'a') nor UTF-16 order (U+FFFF < U+10000 in UTF-8).
        await markers.upsertIfNewer(
          [
            { id: 'case', ttl: 1, change: 'a' },
            { id: 'plane', ttl: 1, change: '\uFFFF' },
          ],
          'change',
        );
        expect(
          await markers.upsertIfNewer(
            [
              { id: 'case', ttl: 2, change: 'B' },
              { id: 'plane', ttl: 2, change: '\u{10000}' },
            ],
            'change',
          ),
        ).toEqual(['skipped', 'updated']);
        expect((await markers.get('marker'))?.doc).toEqual({
          id: 'marker',
          ttl: 1,
          change: '0001:0010',
        });
        expect((await markers.get('legacy'))?.doc).toEqual({
          id: 'legacy',
          ttl: 3,
          change: '0002:0000',
        });
      });

      it('refuses documents without a comparable field', async () => {
        const features = await fresh<FeatureValue>();
        const bad = { id: 'a', value: 1 } as unknown as FeatureValue;
        await expect(features.upsertIfNewer([bad], 'eventTime')).rejects.toBeInstanceOf(
          InvalidArgumentError,
        );
      });
    });

    describe('increment', () => {
      it('counts exactly under 50 concurrent increments and applies onInsert once', async () => {
        const counters = await fresh<Counter>();
        const results = await Promise.all(
          Array.from({ length: 50 }, (_, i) =>
            counters.increment('song', { plays: 1 }, { firstCaller: i, label: 'song' }),
          ),
        );
        const stored = await counters.get('song');
        expect(stored?.doc.plays).toBe(50);
        expect(stored?.version).toBe(50);
        expect(stored?.doc.label).toBe('song');
        const creator = results.filter((result) => result.version === 1);
        expect(creator).toHaveLength(1);
        expect(stored?.doc.firstCaller).toBe(creator[0]?.doc.firstCaller);
        expect(
          results.map((result) => result.doc.plays).sort((a, b) => (a ?? 0) - (b ?? 0)),
        ).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
      });

      it('adds several deltas, creating missing counters at the delta, and returns the result', async () => {
        const counters = await fresh<Counter>();
        const created = await counters.increment(
          'a',
          { plays: 2, skips: -1 },
          { plays: 100, label: 'x' },
        );
        // A counter named in onInsert starts at the delta, not at the onInsert value.
        expect(created).toEqual({ doc: { id: 'a', plays: 2, skips: -1, label: 'x' }, version: 1 });
        const after = await counters.increment('a', { plays: 0.5 });
        expect(after).toEqual({ doc: { id: 'a', plays: 2.5, skips: -1, label: 'x' }, version: 2 });
      });

      it('refuses to add to a field that is not a number', async () => {
        const counters = await fresh<Counter>();
        await counters.insert({ id: 'a', label: 'text' });
        await expect(counters.increment('a', { label: 1 })).rejects.toBeInstanceOf(
          InvalidArgumentError,
        );
        expect(await counters.get('a')).toEqual({ doc: { id: 'a', label: 'text' }, version: 1 });
      });
    });

    describe('expiry', () => {
      const spec = { indexes: [{ fields: ['group'] }], expireAtField: 'expiresAt' };

      it('hides a document whose expiry passed from get, getMany, list, scan and count', async () => {
        const sessions = await fresh<Session>(spec);
        const past = new Date(Date.now() - 1000);
        const future = new Date(Date.now() + 3_600_000);
        await sessions.insert({ id: 'expired', group: 'g', expiresAt: past });
        await sessions.insert({ id: 'live', group: 'g', expiresAt: future });
        await sessions.insert({ id: 'forever', group: 'g' });
        await sessions.insert({ id: 'explicit-null', group: 'g', expiresAt: null });

        expect(await sessions.get('expired')).toBeUndefined();
        expect((await sessions.get('live'))?.doc.expiresAt).toEqual(future);
        expect([...(await sessions.getMany(['expired', 'live'])).keys()]).toEqual(['live']);
        const listed = ['explicit-null', 'forever', 'live'];
        expect(ids((await sessions.list({ limit: 10 })).items)).toEqual(listed);
        expect(ids((await sessions.list({ where: { group: 'g' }, limit: 10 })).items)).toEqual(
          listed,
        );
        expect(ids(await collect(sessions.scan()))).toEqual(listed);
        expect(await sessions.count()).toBe(3);
        expect(await sessions.count({ group: 'g' })).toBe(3);
      });

      it('treats an expired id as absent for writes', async () => {
        const sessions = await fresh<Session>(spec);
        const past = new Date(Date.now() - 1000);
        await sessions.insert({ id: 'a', group: 'g', expiresAt: past });
        await sessions.insert({ id: 'b', group: 'g', expiresAt: past });
        await sessions.insert({ id: 'c', group: 'g', expiresAt: past });
        await expect(sessions.replace({ id: 'a', group: 'h' }, 1)).rejects.toBeInstanceOf(
          NotFoundError,
        );
        expect(await sessions.delete('a')).toBe(false);
        expect(await sessions.insert({ id: 'b', group: 'h' })).toEqual({
          doc: { id: 'b', group: 'h' },
          version: 1,
        });
        expect(await sessions.upsert({ id: 'c', group: 'h' })).toEqual({
          doc: { id: 'c', group: 'h' },
          version: 1,
        });
        expect(ids((await sessions.list({ where: { group: 'h' }, limit: 10 })).items)).toEqual([
          'b',
          'c',
        ]);
      });

      it('requires the expiry field to hold a Date', async () => {
        const sessions = await fresh<Session>(spec);
        const bad = { id: 'a', group: 'g', expiresAt: '2030-01-01' } as unknown as Session;
        await expect(sessions.insert(bad)).rejects.toBeInstanceOf(InvalidArgumentError);
      });
    });

    describe('values', () => {
      it('round-trips Dates as Date and bytes as Uint8Array, nested or not', async () => {
        const blobs = await fresh<Blob>();
        const doc: Blob = {
          id: 'blob',
          createdAt: new Date('2024-05-06T07:08:09.123Z'),
          payload: new Uint8Array([0, 1, 2, 254, 255]),
          nested: { at: new Date(0), bytes: new Uint8Array([42]), tags: ['a', 'b'] },
        };
        await blobs.insert(doc);
        for (const read of [
          (await blobs.get('blob'))?.doc,
          (await blobs.list({ limit: 1 })).items[0]?.doc,
        ]) {
          expect(read?.createdAt).toBeInstanceOf(Date);
          expect(read?.createdAt.toISOString()).toBe('2024-05-06T07:08:09.123Z');
          expect(read?.payload).toBeInstanceOf(Uint8Array);
          expect(Array.from(read?.payload ?? [])).toEqual([0, 1, 2, 254, 255]);
          expect(read?.nested.at).toBeInstanceOf(Date);
          expect(read?.nested.at.getTime()).toBe(0);
          expect(read?.nested.bytes).toBeInstanceOf(Uint8Array);
          expect(Array.from(read?.nested.bytes ?? [])).toEqual([42]);
          expect(read?.nested.tags).toEqual(['a', 'b']);
        }
      });
    });

    describe('edges', () => {
      it('refuses to increment a stored null: only a missing counter counts as 0', async () => {
        const counters = await fresh<{ readonly id: string; readonly plays: number | null }>();
        await counters.insert({ id: 'a', plays: null });
        await expect(counters.increment('a', { plays: 1 })).rejects.toBeInstanceOf(
          InvalidArgumentError,
        );
        expect((await counters.get('a'))?.doc).toEqual({ id: 'a', plays: null });
      });

      it('indexes −0 as 0: found by a filter on either, and replaced under a unique index', async () => {
        const items = await fresh<Item>({ indexes: [{ fields: ['rank'] }] });
        await items.insert({ id: 'negative', rank: -0 });
        await items.insert({ id: 'positive', rank: 0 });
        for (const rank of [0, -0]) {
          expect(ids((await items.list({ where: { rank }, limit: 10 })).items)).toEqual([
            'negative',
            'positive',
          ]);
        }
        const unique = await fresh<Item>({ indexes: [{ fields: ['rank'], unique: true }] });
        const stored = await unique.insert({ id: 'a', rank: -0 });
        await expect(
          unique.replace({ id: 'a', rank: -0, note: 'n' }, stored.version),
        ).resolves.toMatchObject({ version: 2 });
      });

      it('finds nothing, without failing, for ids, page bounds and filters too long to store', async () => {
        const items = await fresh<Item>({ indexes: [{ fields: ['group'] }] });
        await items.insert({ id: 'a', group: 'g' });
        await items.insert({ id: 'b', group: 'g' });
        const long = 'x'.repeat(3_000);
        expect((await items.getMany([long, 'a'])).size).toBe(1);
        expect(await items.count({ group: long })).toBe(0);
        expect((await items.list({ where: { group: long }, limit: 10 })).items).toEqual([]);
        expect(await items.deleteWhere({ group: long })).toBe(0);
        // A page bound compares as the id it is: "a" + 3,000 × "x" lies between "a" and "b".
        for (const where of [undefined, { group: 'g' }]) {
          const page = await items.list({ where, afterId: `a${long}`, limit: 10 });
          expect(ids(page.items)).toEqual(['b']);
        }
        const multibyte = `a${'é'.repeat(2_000)}`;
        expect(ids((await items.list({ afterId: multibyte, limit: 10 })).items)).toEqual(['b']);
        // A stored id of 512 bytes that sorts before the bound only at its last byte, where the
        // bound has a character of two bytes.
        const edge = await fresh<Item>();
        await edge.insert({ id: `${'p'.repeat(511)}a` });
        await edge.insert({ id: 'q' });
        const bound = `${'p'.repeat(511)}${'é'.repeat(10)}`;
        expect(ids((await edge.list({ afterId: bound, limit: 10 })).items)).toEqual(['q']);
      });

      it('refuses indexed strings longer than an index entry holds, and NUL in a field name', async () => {
        const items = await fresh<Item>({ indexes: [{ fields: ['group'] }] });
        await expect(items.insert({ id: 'a', group: 'x'.repeat(1_025) })).rejects.toBeInstanceOf(
          InvalidArgumentError,
        );
        await expect(items.insert({ id: 'a', group: 'x'.repeat(1_024) })).resolves.toMatchObject({
          version: 1,
        });
        const loose = await fresh<{ readonly id: string } & Record<string, unknown>>();
        await expect(loose.insert({ id: 'b', 'a\u0000b': 1 })).rejects.toBeInstanceOf(
          InvalidArgumentError,
        );
        await expect(loose.count({ 'a\u0000b': 1 })).rejects.toBeInstanceOf(InvalidArgumentError);
        await expect(loose.upsertIfNewer([{ id: 'c', t: 1 }], 't\u0000')).rejects.toBeInstanceOf(
          InvalidArgumentError,
        );
      });

      it('pages in UTF-8 byte order through an index whose leading field alone is filtered', async () => {
        const items = await fresh<Item>({ indexes: [{ fields: ['group', 'rank'] }] });
        // U+FF5E sorts before U+1F600 by bytes, after it by UTF-16 code units.
        for (const [id, rank] of [
          ['\u{1F600}', 1],
          ['\uFF5E', 2],
          ['a', 3],
        ] as const) {
          await items.insert({ id, group: 'g', rank });
        }
        const page = await items.list({ where: { group: 'g' }, limit: 10 });
        expect(ids(page.items)).toEqual(['a', '\uFF5E', '\u{1F600}']);
        const after = await items.list({ where: { group: 'g' }, afterId: '\uFF5E', limit: 10 });
        expect(ids(after.items)).toEqual(['\u{1F600}']);
      });

      it('refuses the id as the field of a conditional write', async () => {
        const items = await fresh<Item>();
        await expect(items.upsertIfNewer([{ id: 'a' }], 'id')).rejects.toBeInstanceOf(
          InvalidArgumentError,
        );
      });
    });

    it('answers ping while open, and UNAVAILABLE once closed', async () => {
      await expect(store.ping()).resolves.toBeUndefined();
      const other = await openStore();
      const items = await other.collection<Item>({ name: 'contract_closed' });
      await other.close();
      await expect(other.ping()).rejects.toBeInstanceOf(UnavailableError);
      await expect(items.get('a')).rejects.toBeInstanceOf(UnavailableError);
      await expect(items.upsert({ id: 'a' })).rejects.toBeInstanceOf(UnavailableError);
    });
  });
}
