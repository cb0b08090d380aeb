/**
 * The change log's documents stay within MongoDB's 16 MiB document limit whatever the rows hold:
 * the size bound is checked against the BSON encoder of the MongoDB driver, not against itself.
 */
import fc from 'fast-check';
import { BSON } from 'mongodb';
import { changedRowBytes, logEntriesOf, type ChangedRow } from '../src/store/feature-rows';

const MONGODB_DOCUMENT_LIMIT = 16 * 1024 * 1024;

const storedValue = fc.oneof(
  fc.double({ noNaN: true }),
  fc.integer(),
  fc.string({ unit: 'grapheme' }),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.double({ noNaN: true }), { maxLength: 300 }),
  fc.array(fc.string({ unit: 'binary' }), { maxLength: 20 }),
);

const changedRow: fc.Arbitrary<ChangedRow> = fc.record({
  entityKey: fc.string({ unit: 'binary', maxLength: 40 }),
  eventTime: fc.integer({ min: 0, max: 2 ** 45 }),
  values: fc.dictionary(fc.string({ unit: 'binary', maxLength: 20 }), storedValue, {
    maxKeys: 8,
  }),
});

function documentBytes(rows: readonly ChangedRow[]): number {
  return BSON.calculateObjectSize({
    _id: '000000000000001',
    view: 'view',
    origin: 'replica',
    rows,
    expiresAt: new Date(),
  });
}

describe('change-log entries', () => {
  it('bounds a row from above by its BSON size', () => {
    fc.assert(
      fc.property(changedRow, (row) => {
        expect(changedRowBytes(row)).toBeGreaterThanOrEqual(BSON.calculateObjectSize(row));
      }),
      { numRuns: 500 },
    );
  });

  it('cuts 500 rows of 4,096-float vectors into documents MongoDB accepts, in order', () => {
    const rows: ChangedRow[] = Array.from({ length: 500 }, (_, i) => ({
      entityKey: `item-${i}`,
      eventTime: 1_700_000_000_000 + i,
      values: { embedding: Array.from({ length: 4096 }, (_, j) => i + j / 4096) },
    }));
    expect(documentBytes(rows)).toBeGreaterThan(MONGODB_DOCUMENT_LIMIT);

    const entries = logEntriesOf(rows);
    expect(entries.length).toBeGreaterThan(1);
    for (const entry of entries) {
      expect(documentBytes(entry)).toBeLessThan(MONGODB_DOCUMENT_LIMIT);
    }
    expect(entries.flat()).toEqual(rows);
  });

  it('keeps small rows 500 to a document', () => {
    const rows: ChangedRow[] = Array.from({ length: 1200 }, (_, i) => ({
      entityKey: `user-${i}`,
      eventTime: i,
      values: { clicks: i },
    }));
    expect(logEntriesOf(rows).map((entry) => entry.length)).toEqual([500, 500, 200]);
  });
});
