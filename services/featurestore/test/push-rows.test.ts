/**
 * Rows whose values would not fit in a stored record: MongoDB holds 16 MiB of BSON per document,
 * and a vector or list grows in BSON (each element carries its type and index). The size is
 * checked against the `bson` package's own measure, which the MongoDB driver writes with.
 */
import { BSON } from 'mongodb';
import { ValueType } from '../src/domain/feature-values';
import type { FeatureDefinition } from '../src/domain/registry';
import {
  MAX_ROW_VIOLATIONS,
  MAX_STORED_VALUES_BYTES,
  prepareRows,
  storedValuesBytes,
} from '../src/push-rows';
import { userRow, vector } from './support/fixtures';

const USER = [{ joinKey: 'user_id', valueType: ValueType.String }];

function vectorFeatures(count: number): FeatureDefinition[] {
  return Array.from({ length: count }, (_, i) => ({
    name: `embedding_${i}`,
    valueType: ValueType.FloatVector,
    description: '',
    vectorLength: 4_096,
  }));
}

describe('storedValuesBytes', () => {
  it("is BSON's size of the values, whole numbers written as int32 where they fit", () => {
    const doubles = {
      ctr: 0.25,
      genre: 'jazz',
      city: 'Göteborg 東京 🎷',
      premium: true,
      missing: null,
      empty: [],
      one: [1.5],
      ten: Array.from({ length: 10 }, (_, i) => i + 0.5),
      eleven: Array.from({ length: 11 }, (_, i) => i + 0.5),
      thousand: Array.from({ length: 1_001 }, (_, i) => i + 0.5),
      tags: ['a', 'ünïcode', ''],
    };
    // Exact: strings measured, as they are when the bound is over the threshold.
    expect(storedValuesBytes(doubles, 0)).toBe(BSON.calculateObjectSize(doubles));
    expect(storedValuesBytes(doubles)).toBeGreaterThanOrEqual(BSON.calculateObjectSize(doubles));
    const integers = {
      plays: 3,
      counts: [1, 0, -2_147_483_648, 2_147_483_647, 2_147_483_648, -0, 2 ** 53],
      big: 2 ** 40,
    };
    expect(storedValuesBytes(integers, 0)).toBe(BSON.calculateObjectSize(integers));
  });
});

describe('prepareRows', () => {
  it('refuses a row whose values take more than a stored record holds, naming the row', () => {
    // 300 vectors of 4,096 floats: 4.9 MB of protobuf, over 17 MB of BSON.
    const features = vectorFeatures(300);
    const floats = Array.from({ length: 4_096 }, (_, i) => i / 4_096);
    const embedding = vector(floats);
    const values = Object.fromEntries(features.map((f) => [f.name, embedding]));
    const now = Date.now();
    const { rows, violations } = prepareRows(
      [
        userRow('u1', new Date(now), { embedding_0: embedding }),
        userRow('u2', new Date(now), values),
      ],
      USER,
      features,
      now,
    );
    expect(rows).toEqual([]);
    expect(violations.map((v) => [v.field, v.reason])).toEqual([['rows[1].values', 'TOO_LARGE']]);
    expect(violations[0]?.description).toMatch(
      new RegExp(
        `^take \\d+ bytes as stored, more than a stored record holds \\(${MAX_STORED_VALUES_BYTES}\\)$`,
      ),
    );
    const stored = Object.fromEntries(features.map((f) => [f.name, floats]));
    expect(BSON.calculateObjectSize(stored)).toBeGreaterThan(16 * 1024 * 1024);

    // 250 of them fit (about 14.6 MB).
    const fewer = vectorFeatures(250);
    const fewerValues = Object.fromEntries(fewer.map((f) => [f.name, embedding]));
    expect(
      prepareRows([userRow('u2', new Date(now), fewerValues)], USER, fewer, now),
    ).toMatchObject({ violations: [], rows: [{ entityKey: 'u2' }] });
  });

  it('names the first violations of a request that holds a great many, and looks no further', () => {
    const now = Date.now();
    const embedding = vector([0.5]);
    // One row with 100,000 features the view does not have, and 1,000 rows without a user id.
    const unknown = Object.fromEntries(
      Array.from({ length: 100_000 }, (_, i) => [`unknown_${i}`, embedding]),
    );
    const keyless = Array.from({ length: 1_000 }, () => ({
      ...userRow('u', new Date(now), {}),
      entityKey: {},
    }));
    const { rows, violations } = prepareRows(
      [userRow('u1', new Date(now), unknown), ...keyless],
      USER,
      vectorFeatures(1),
      now,
    );
    expect(rows).toEqual([]);
    expect(violations).toHaveLength(MAX_ROW_VIOLATIONS);
    expect(violations[0]).toMatchObject({
      field: 'rows[0].values.unknown_0',
      reason: 'UNKNOWN_FEATURE',
    });
  });
});
