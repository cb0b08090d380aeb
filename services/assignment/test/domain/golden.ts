/**
 * Golden vectors computed by sources independent of this code: published FNV test values, the
 * GrowthBook SDK's language-neutral spec (cases.json) and a throwaway Python implementation.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** A golden file: where the values come from, and the cases. */
export interface GoldenFile<Case> {
  readonly source: string;
  readonly cases: Case[];
}

/** `[seed, value, version, expected]` */
export type HashCase = [seed: string, value: string, version: number, expected: number | null];
/** `[variantCount, coverage, weights]` */
export type RangeArgs = [variantCount: number, coverage: number, weights: number[] | null];
/** `[name, condition, attributes, expected]` */
export type ConditionCase = [string, Record<string, unknown>, Record<string, unknown>, boolean];

/** The selected sections of GrowthBook's cases.json. */
export interface GrowthBookSpec {
  readonly source: string;
  readonly hash: HashCase[];
  readonly getBucketRange: [name: string, args: RangeArgs, ranges: number[][]][];
  readonly chooseVariation: [
    name: string,
    n: number,
    ranges: [number, number][],
    expected: number,
  ][];
  readonly inNamespace: [
    name: string,
    unitId: string,
    ns: [string, number, number],
    expected: boolean,
  ][];
  readonly evalCondition: {
    /** Cases where sift (MongoDB semantics) and GrowthBook agree. */
    readonly agree: ConditionCase[];
    /** `[name, condition, attributes, growthbook, tandem, why]`: documented differences. */
    readonly differ: [
      string,
      Record<string, unknown>,
      Record<string, unknown>,
      boolean,
      boolean,
      string,
    ][];
    /** `[name, condition, attributes, growthbook, why]`: conditions Tandem rejects as invalid. */
    readonly invalidInTandem: [
      string,
      Record<string, unknown>,
      Record<string, unknown>,
      boolean,
      string,
    ][];
  };
}

/** Reads a file of `test/domain/golden/`, typed by the caller. */
// eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- a typed JSON reader
export function loadGolden<T>(name: string): T {
  return JSON.parse(readFileSync(join(__dirname, 'golden', name), 'utf8')) as T;
}
