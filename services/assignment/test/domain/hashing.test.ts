import { fnv1a32, fnv1a32OfDecimal, hash } from '../../src/domain/hashing';
import { loadGolden, type GoldenFile, type GrowthBookSpec, type HashCase } from './golden';

const published = loadGolden<GoldenFile<[string, string]>>('fnv-published.json');
const fnvPython = loadGolden<GoldenFile<[string, string]>>('fnv-python.json');
const spec = loadGolden<GrowthBookSpec>('growthbook-spec.json');
const hashPython = loadGolden<GoldenFile<HashCase>>('hash-python.json');

describe('FNV-1a 32-bit', () => {
  it.each(published.cases)('matches the published test value for %j', (input, expectedHex) => {
    expect(fnv1a32(input)).toBe(parseInt(expectedHex, 16));
  });

  it.each(fnvPython.cases)(
    'hashes %j over UTF-16 code units like the independent Python implementation',
    (input, expectedHex) => {
      expect(fnv1a32(input)).toBe(parseInt(expectedHex, 16));
    },
  );

  it.each([0, 7, 10, 99, 1234567, 4294967295, 2166136261])(
    'hashes the decimal form of %d without building the string',
    (n) => {
      expect(fnv1a32OfDecimal(n)).toBe(fnv1a32(String(n)));
    },
  );
});

describe('hash(seed, value, version)', () => {
  it.each(spec.hash)(
    'matches the GrowthBook SDK spec: hash(%j, %j, v%d) = %j',
    (seed, value, version, expected) => {
      expect(hash(seed, value, version)).toBe(expected);
    },
  );

  it.each(hashPython.cases)(
    'matches the independent Python implementation: hash(%j, %j, v%d) = %j',
    (seed, value, version, expected) => {
      expect(hash(seed, value, version)).toBe(expected);
    },
  );

  it('returns null for an unknown hash version rather than guessing', () => {
    expect(hash('seed', 'unit', 0)).toBeNull();
    expect(hash('seed', 'unit', 3)).toBeNull();
  });
});
