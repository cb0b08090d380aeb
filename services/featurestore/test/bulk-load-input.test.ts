/**
 * The bulk loader's NDJSON input: a malformed line is reported with its file and line number, and
 * so is a value JSON cannot give as the view's type (never turned into one that passes).
 */
import { Readable } from 'node:stream';
import { ValueType } from '../src/domain/feature-values';
import { prepareRows } from '../src/push-rows';
import { parseJsonLines, rowOfJson, type JsonLine } from '../src/store/bulk-load';

/** Lines as readline gives them. */
const linesOf = (...lines: string[]): AsyncIterable<string> => Readable.from(lines);

async function valuesOf(lines: AsyncIterable<JsonLine>): Promise<unknown[]> {
  const out: unknown[] = [];
  for await (const line of lines) out.push(line.value);
  return out;
}

describe('the bulk loader input', () => {
  it('reads one JSON value per line, skipping blank lines', async () => {
    const values = await valuesOf(
      parseJsonLines(linesOf('{"a": 1}', '', '  ', '[2]'), 'rows.ndjson'),
    );
    expect(values).toEqual([{ a: 1 }, [2]]);
  });

  it('skips a UTF-8 byte-order mark at the start of the file', async () => {
    const values = await valuesOf(
      parseJsonLines(linesOf('\uFEFF{"a": 1}', '{"a": 2}'), 'rows.ndjson'),
    );
    expect(values).toEqual([{ a: 1 }, { a: 2 }]);
  });

  it('names the file and the line number of a line that is not JSON', async () => {
    const values = parseJsonLines(linesOf('{"a": 1}', '', 'not json', '{"a": 2}'), 'rows.ndjson');
    await expect(valuesOf(values)).rejects.toThrow(/^rows\.ndjson:3: Unexpected token/);
  });
});

describe('a bulk-load record', () => {
  const types = {
    keys: new Map([['user_id', ValueType.String]]),
    features: new Map([
      ['ctr', ValueType.Double],
      ['country', ValueType.String],
      ['embedding', ValueType.FloatVector],
      ['genres', ValueType.StringList],
    ]),
  };
  const row = (value: unknown) => rowOfJson({ value, where: 'rows.ndjson:7' }, types);
  const record = (fields: Record<string, unknown>) => ({
    entity_key: { user_id: 'u1' },
    values: { ctr: 0.5 },
    event_time: '2026-01-01T00:00:00Z',
    ...fields,
  });

  it('becomes the row WriteFeatures would take, a null value a null', () => {
    expect(row(record({ values: { ctr: null, country: 'SE' } }))).toEqual({
      entityKey: { user_id: { kind: { $case: 'stringValue', value: 'u1' } } },
      values: {
        ctr: { kind: undefined },
        country: { kind: { $case: 'stringValue', value: 'SE' } },
      },
      eventTime: new Date('2026-01-01T00:00:00Z'),
    });
  });

  it.each([
    [{ entity_key: { user_id: 5 } }, 'entity_key.user_id must be a VALUE_TYPE_STRING value, not 5'],
    [{ entity_key: { user_id: null } }, 'entity_key.user_id must not be null'],
    [{ entity_key: { user_id: { a: 1 } } }, 'entity_key.user_id must be a VALUE_TYPE_STRING value'],
    [{ values: { country: 5 } }, 'values.country must be a VALUE_TYPE_STRING value, not 5'],
    [{ values: { embedding: ['1'] } }, 'values.embedding must be a VALUE_TYPE_FLOAT_VECTOR value'],
    [{ values: { genres: [1, 2] } }, 'values.genres must be a VALUE_TYPE_STRING_LIST value'],
    [{ event_time: null }, 'event_time must be an RFC 3339 string'],
    [{ event_time: true }, 'event_time must be an RFC 3339 string'],
    [{ event_time: 'yesterday' }, 'event_time "yesterday" is not an RFC 3339 time'],
    // Read in the machine's time zone by JavaScript, and not RFC 3339 (the offset is required).
    [{ event_time: '2026-01-01T00:00:00' }, 'event_time "2026-01-01T00:00:00" is not an RFC 3339'],
    [{ event_time: '2026-01-01' }, 'event_time "2026-01-01" is not an RFC 3339 time'],
    // Taken by JavaScript as March 2, and as the next day.
    [{ event_time: '2026-02-30T00:00:00Z' }, 'event_time "2026-02-30T00:00:00Z" is not a time'],
    [{ event_time: '2026-01-01T24:00:00Z' }, 'event_time "2026-01-01T24:00:00Z" is not a time'],
    [{ values: [1] }, 'values must be a JSON object'],
  ])('%j is refused, naming the line and the field', (fields, message) => {
    expect(() => row(record(fields))).toThrow(`rows.ndjson:7: ${message}`);
  });

  it.each([
    ['2026-01-01T02:30:00+02:30', '2026-01-01T00:00:00.000Z'],
    ['2026-01-01t00:00:00.123456z', '2026-01-01T00:00:00.123Z'],
    ['2026-01-01 00:00:00-01:00', '2026-01-01T01:00:00.000Z'],
  ])('takes the RFC 3339 time %s as %s', (eventTime, utc) => {
    expect(row(record({ event_time: eventTime })).eventTime?.toISOString()).toBe(utc);
  });

  it('keeps a key "__proto__", which the row validation then refuses as no feature', () => {
    const parsed = row(
      JSON.parse(
        '{"entity_key": {"user_id": "u1"}, "values": {"__proto__": {"a": 1}, "ctr": 2}, "event_time": 0}',
      ),
    );
    expect(Object.keys(parsed.values)).toEqual(['__proto__', 'ctr']);
    const prepared = prepareRows(
      [parsed],
      [{ joinKey: 'user_id', valueType: ValueType.String }],
      [{ name: 'ctr', valueType: ValueType.Double, description: '', vectorLength: 0 }],
      Date.now(),
    );
    expect(prepared.violations.map((v) => [v.field, v.reason])).toEqual([
      ['rows[0].values.__proto__', 'UNKNOWN_FEATURE'],
    ]);
  });
});
