import { FeatureStatus, type FeatureValue } from '../../src/domain/feature-values';
import { encodeEntityKey, OnlineTable, type OnlineRow } from '../../src/domain/online-table';

const double = (value: number): FeatureValue => ({ kind: 'double', value });
const text = (value: string): FeatureValue => ({ kind: 'string', value });
const t0 = 1_700_000_000_000;

function userStats(ttlMs = 0): OnlineTable {
  return new OnlineTable({ features: ['ctr', 'plays', 'genre'], ttlMs });
}

function row(
  entityKey: string,
  eventTime: number,
  values: Record<string, FeatureValue | null>,
): OnlineRow<FeatureValue> {
  return { entityKey, eventTime, values };
}

describe('OnlineTable', () => {
  it('returns columns in request order, one entry per entity row, with statuses and event times', () => {
    const table = userStats();
    table.write(
      [
        row('u1', t0, { ctr: double(0.1), plays: double(3), genre: text('jazz') }),
        row('u2', t0 + 5, { ctr: double(0.2), plays: double(4) }),
      ],
      t0 + 10,
    );
    const genre = table.featureIndex('genre');
    const ctr = table.featureIndex('ctr');
    const read = table.read(['u2', 'missing', 'u1', 'u2'], [genre, ctr], t0 + 20);

    expect(read.features).toEqual(['genre', 'ctr']);
    expect(read.rowCount).toBe(4);
    // Column-major: genre for the four rows, then ctr for the four rows.
    expect(read.values).toEqual([
      null,
      null,
      text('jazz'),
      null,
      double(0.2),
      null,
      double(0.1),
      double(0.2),
    ]);
    expect(Array.from(read.statuses)).toEqual([
      FeatureStatus.NullValue,
      FeatureStatus.NotFound,
      FeatureStatus.Present,
      FeatureStatus.NullValue,
      FeatureStatus.Present,
      FeatureStatus.NotFound,
      FeatureStatus.Present,
      FeatureStatus.Present,
    ]);
    expect(Array.from(read.eventTimes)).toEqual([t0 + 5, 0, t0, t0 + 5]);
  });

  it('keeps the stored record when a write carries an older event time (late events lose)', () => {
    const table = userStats();
    table.write([row('u1', t0, { ctr: double(0.5) })], t0);
    const outcome = table.write([row('u1', t0 - 1, { ctr: double(0.9) })], t0 + 1);
    expect(outcome).toEqual({ written: 0, skippedOlder: 1, storedRows: [] });
    expect(table.get('u1')?.values.ctr).toEqual(double(0.5));
    expect(table.get('u1')?.eventTime).toBe(t0);
  });

  it('overwrites on an equal event time, so writing the same row twice is harmless', () => {
    const table = userStats();
    const same = row('u1', t0, { ctr: double(0.5), plays: double(2) });
    table.write([same], t0);
    const memory = table.memory();
    expect(table.write([same], t0 + 1)).toEqual({ written: 1, skippedOlder: 0, storedRows: [0] });
    expect(table.get('u1')).toEqual({
      values: { ctr: double(0.5), plays: double(2), genre: null },
      eventTime: t0,
      writtenAt: t0 + 1,
    });
    expect(table.memory()).toEqual(memory);
  });

  it('on an equal event time, keeps the write of the higher order, in whichever order they come', () => {
    // Two replicas applying storage's writes 7 and 9 (same event time) in opposite orders.
    const tables = [userStats(), userStats()];
    const earlier = { ...row('u1', t0, { ctr: double(0.1) }), order: 7 };
    const later = { ...row('u1', t0, { ctr: double(0.9) }), order: 9 };
    tables[0]!.write([earlier], t0);
    tables[0]!.write([later], t0);
    tables[1]!.write([later], t0);
    expect(tables[1]!.write([earlier], t0)).toEqual({
      written: 0,
      skippedOlder: 1,
      storedRows: [],
    });
    for (const table of tables) expect(table.get('u1')?.values.ctr).toEqual(double(0.9));
    // A newer event time wins whatever its order.
    tables[0]!.write([{ ...row('u1', t0 + 1, { ctr: double(0.5) }), order: 1 }], t0);
    expect(tables[0]!.get('u1')?.values.ctr).toEqual(double(0.5));
  });

  it('replaces the whole record: a feature left out of the newer row reads as NULL_VALUE', () => {
    const table = userStats();
    table.write([row('u1', t0, { ctr: double(0.5), plays: double(2) })], t0);
    table.write([row('u1', t0 + 1, { plays: double(3) })], t0 + 1);
    const read = table.read(['u1'], [0, 1], t0 + 2);
    expect(Array.from(read.statuses)).toEqual([FeatureStatus.NullValue, FeatureStatus.Present]);
  });

  it('within a batch, lets the later event time win and on a tie the later row', () => {
    const table = userStats();
    const outcome = table.write(
      [
        row('u1', t0 + 5, { ctr: double(1) }),
        row('u1', t0, { ctr: double(2) }),
        row('u2', t0, { ctr: double(3) }),
        row('u2', t0, { ctr: double(4) }),
      ],
      t0,
    );
    expect(outcome).toEqual({ written: 2, skippedOlder: 2, storedRows: [0, 3] });
    expect(table.get('u1')?.values.ctr).toEqual(double(1));
    expect(table.get('u2')?.values.ctr).toEqual(double(4));
  });

  it('enforces the TTL on every read: eventTime + ttl < now is EXPIRED, with its event time', () => {
    const table = userStats(60_000);
    table.write([row('u1', t0, { ctr: double(0.5) })], t0);
    expect(table.read(['u1'], [0], t0 + 60_000).statuses[0]).toBe(FeatureStatus.Present);
    const expired = table.read(['u1'], [0], t0 + 60_001);
    expect(expired.statuses[0]).toBe(FeatureStatus.Expired);
    expect(expired.values[0]).toBeNull();
    expect(expired.eventTimes[0]).toBe(t0);
  });

  it('sheds expired records, which then read as NOT_FOUND', () => {
    const table = userStats(60_000);
    table.write([row('u1', t0, { ctr: double(0.5) }), row('u2', t0 + 50_000, {})], t0);
    expect(table.removeExpired(t0 + 60_001)).toBe(1);
    expect(table.read(['u1'], [0], t0 + 60_001).statuses[0]).toBe(FeatureStatus.NotFound);
    expect(table.memory().entityCount).toBe(1);
  });

  it('lists the records a TTL expires within a span, soonest first, up to a limit', () => {
    const table = userStats(60_000);
    table.write(
      [
        row('late', t0 + 30_000, {}),
        row('soon', t0 + 10_000, {}),
        row('past', t0 - 10_000, {}),
        row('beyond', t0 + 90_000, {}),
      ],
      t0,
    );
    // Expiries under a 60 s TTL: past t0+50s, soon t0+70s, late t0+90s, beyond t0+150s.
    expect(table.expiringWithin(60_000, t0 + 60_000, t0 + 120_000, 10)).toEqual(['soon', 'late']);
    expect(table.expiringWithin(60_000, t0 + 60_000, t0 + 120_000, 1)).toEqual(['soon']);
    expect(table.expiringWithin(0, t0, t0 + 120_000, 10)).toEqual([]);
  });

  it('accounts entities and values for metrics, and reuses the slots of deleted records', () => {
    const table = userStats();
    table.write(
      [row('u1', t0, { ctr: double(1), plays: double(2) }), row('u2', t0, { ctr: double(3) })],
      t0,
    );
    expect(table.memory()).toMatchObject({ entityCount: 2, valueCount: 3 });
    expect(table.delete('u1')).toBe(true);
    expect(table.memory()).toMatchObject({ entityCount: 1, valueCount: 1 });
    table.write([row('u3', t0, { genre: text('pop') })], t0);
    expect(table.memory()).toMatchObject({ entityCount: 2, valueCount: 2 });
    expect(table.get('u3')?.values).toEqual({ ctr: null, plays: null, genre: text('pop') });
    expect(table.memory().approximateBytes).toBeGreaterThan(0);
  });

  it('adds features to a live table without touching stored values, and refuses to remove one', () => {
    const table = userStats();
    table.write([row('u1', t0, { ctr: double(1) })], t0);
    table.redefine(['ctr', 'plays', 'genre', 'skips'], 0, t0);
    expect(table.featureIndex('skips')).toBe(3);
    expect(table.get('u1')?.values).toEqual({
      ctr: double(1),
      plays: null,
      genre: null,
      skips: null,
    });
    expect(() => {
      table.redefine(['ctr'], 0, t0);
    }).toThrow(/cannot be removed/);
  });

  it('drops the records past the old TTL when the TTL changes, so a longer one does not bring them back', () => {
    const table = userStats(1_000);
    table.write([row('old', t0 - 1_500, { ctr: double(1) })], t0);
    table.write([row('edge', t0 - 1_000, { ctr: double(2) })], t0);
    table.write([row('live', t0 - 500, { ctr: double(3) })], t0);
    // Storage, which expired 'old' by the 1 s TTL it was stored under, no longer has it.
    table.redefine(['ctr', 'plays', 'genre'], 3_600_000, t0);
    const read = table.read(['old', 'edge', 'live'], [0], t0);
    expect(Array.from(read.statuses)).toEqual([
      FeatureStatus.NotFound,
      FeatureStatus.Present,
      FeatureStatus.Present,
    ]);
    // Without a TTL before, nothing was past it: storage held every record (it reads EXPIRED now).
    const untimed = userStats(0);
    untimed.write([row('old', t0 - 86_400_000, { ctr: double(1) })], t0);
    untimed.redefine(['ctr', 'plays', 'genre'], 1_000, t0);
    expect(untimed.get('old')).toBeDefined();
  });

  it('grows past its initial capacity', () => {
    const table = userStats();
    const rows = Array.from({ length: 5_000 }, (_, i) => row(`u${i}`, t0, { plays: double(i) }));
    expect(table.write(rows, t0).written).toBe(5_000);
    expect(table.read(['u4999'], [1], t0).values[0]).toEqual(double(4_999));
  });
});

describe('encodeEntityKey', () => {
  it('uses a single key as it is and encodes composite keys unambiguously', () => {
    expect(encodeEntityKey(['u1'])).toBe('u1');
    expect(encodeEntityKey([42])).toBe('42');
    expect(encodeEntityKey(['a,b', 'c'])).not.toBe(encodeEntityKey(['a', 'b,c']));
  });
});
