/**
 * The bucketing hash, bit-for-bit compatible with the GrowthBook SDK's versioned hashing so that an
 * experiment moved between GrowthBook and Tandem keeps every unit in the same variant.
 *
 * FNV-1a 32-bit runs over UTF-16 code units (what `String#charCodeAt` returns), not UTF-8 bytes,
 * because that is what the SDK does. Version 1 is kept only for experiments that already use it (it
 * is biased: similar ids land in similar buckets); version 2, the default, rehashes the decimal
 * string of the first hash to remove that bias.
 *
 * The `fnv…` building blocks hash two strings without concatenating them (FNV-1a is a streaming
 * hash), so the evaluator's hot path does not allocate a string per experiment.
 */

/** FNV-1a 32-bit offset basis (the hash of the empty string). */
export const FNV_OFFSET_BASIS = 0x811c9dc5;

/** The hash versions the bucketing hash knows, with the numbers of `tandem.assignment.v1.HashVersion`. */
export const HashVersion = { V1: 1, V2: 2 } as const;
/** A known hash version. */
export type HashVersion = (typeof HashVersion)[keyof typeof HashVersion];

/** The default hash version for new experiments and holdouts. */
export const DEFAULT_HASH_VERSION: HashVersion = HashVersion.V2;

/** The FNV-1a 32-bit prime. */
const FNV_PRIME = 16777619;
// Bound once: inside a VM context (Jest) every read of the global `Math` is an interceptor call.
const imul = Math.imul;

/**
 * Continues an FNV-1a 32-bit hash from `state` over the UTF-16 code units of `text`. `Math.imul`
 * is the multiply modulo 2^32 the algorithm specifies, in one machine instruction. The result is a
 * signed 32-bit state; finish it with `>>> 0`.
 */
export function fnvContinue(state: number, text: string): number {
  let h = state | 0;
  for (let i = 0; i < text.length; i++) h = imul(h ^ text.charCodeAt(i), FNV_PRIME);
  return h;
}

/** FNV-1a 32-bit of `text` over UTF-16 code units, as an unsigned integer. */
export function fnv1a32(text: string): number {
  return fnvContinue(FNV_OFFSET_BASIS, text) >>> 0;
}

// Digits of a uint32, most significant last; reused so hashing a number's decimal form allocates
// nothing. Safe because hashing is synchronous and never re-entered.
const digits = new Uint8Array(10);

/** FNV-1a 32-bit of `String(n)` for an unsigned 32-bit integer `n`, without building the string. */
export function fnv1a32OfDecimal(n: number): number {
  let count = 0;
  let rest = n;
  do {
    // Exact for a uint32: the correctly rounded quotient truncates to the integer quotient, and a
    // division is far cheaper than the floating-point remainder `%` would be here.
    const quotient = (rest / 10) >>> 0;
    digits[count++] = rest - quotient * 10;
    rest = quotient;
  } while (rest > 0);
  let h = FNV_OFFSET_BASIS | 0;
  while (count > 0) {
    // '0' is code unit 48.
    h = imul(h ^ (48 + (digits[--count] ?? 0)), FNV_PRIME);
  }
  return h >>> 0;
}

/**
 * The v2 bucket of `value` under a precomputed seed state `fnvContinue(FNV_OFFSET_BASIS, seed)`:
 * `fnv(String(fnv(seed + value))) % 10000 / 10000`.
 */
export function hashV2FromSeedState(seedState: number, value: string): number {
  return bucketV2FromSeedState(seedState, value) / V2_BUCKETS;
}

/** The number of distinct v2 buckets: a v2 hash is `bucket / V2_BUCKETS`. */
export const V2_BUCKETS = 10000;

/** The integer bucket in [0, V2_BUCKETS) of {@link hashV2FromSeedState}. */
export function bucketV2FromSeedState(seedState: number, value: string): number {
  return fnv1a32OfDecimal(fnvContinue(seedState, value) >>> 0) % V2_BUCKETS;
}

/**
 * The v1 bucket of `value + suffix` from a precomputed `valueState = fnvContinue(FNV_OFFSET_BASIS,
 * value)`: `fnv(value + suffix) % 1000 / 1000`. Every v1 hash of one unit shares its prefix.
 */
export function hashV1FromValueState(valueState: number, suffix: string): number {
  return bucketV1FromValueState(valueState, suffix) / V1_BUCKETS;
}

/** The number of distinct v1 buckets: a v1 hash is `bucket / V1_BUCKETS`. */
export const V1_BUCKETS = 1000;

/** The integer bucket in [0, V1_BUCKETS) of {@link hashV1FromValueState}. */
export function bucketV1FromValueState(valueState: number, suffix: string): number {
  return (fnvContinue(valueState, suffix) >>> 0) % V1_BUCKETS;
}

/**
 * The bucket of `value` in [0, 1) for `seed`, as GrowthBook's `hash(seed, value, version)`:
 * v2 = `fnv(String(fnv(seed + value))) % 10000 / 10000`, v1 = `fnv(value + seed) % 1000 / 1000`.
 * Returns null for an unknown version, as the SDK does, so the caller treats the unit as not
 * bucketed rather than guessing.
 */
export function hash(seed: string, value: string, version: number): number | null {
  if (version === HashVersion.V2) {
    return hashV2FromSeedState(fnvContinue(FNV_OFFSET_BASIS, seed), value);
  }
  if (version === HashVersion.V1) {
    return hashV1FromValueState(fnvContinue(FNV_OFFSET_BASIS, value), seed);
  }
  return null;
}

/** Whether `version` is a hash version this module implements. */
export function isHashVersion(version: number): version is HashVersion {
  return version === HashVersion.V1 || version === HashVersion.V2;
}
