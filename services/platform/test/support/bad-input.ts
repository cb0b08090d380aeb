/**
 * Helpers for bad-input tests: sends encoded request bytes through a raw grpc-js client (identity
 * serializers) and checks the outcome against the project's rule for bad input: OK or a
 * documented code, never UNKNOWN or INTERNAL, and INVALID_ARGUMENT with field violations.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import fc from 'fast-check';
import { decodeStatus, type DecodedStatus } from '../../src/errors';
import { RawClient } from './raw-call';

export interface Outcome {
  readonly code: GrpcCode;
  readonly status: DecodedStatus | undefined;
  readonly response: Buffer | undefined;
}

/** A {@link RawClient} whose calls resolve with their status code and decoded error details. */
export class RawCaller {
  private readonly client: RawClient;

  constructor(address: string, adminToken?: string) {
    this.client = new RawClient(address, adminToken);
  }

  async call(path: string, bytes: Uint8Array, timeoutMs = 20_000): Promise<Outcome> {
    const { error, response } = await this.client.call(path, bytes, timeoutMs);
    if (error) return { code: error.code, status: decodeStatus(error), response: undefined };
    return { code: GrpcCode.OK, status: undefined, response };
  }

  close(): void {
    this.client.close();
  }
}

/** Codes a bad request may get (besides OK). */
export const DOCUMENTED: ReadonlySet<GrpcCode> = new Set([
  GrpcCode.INVALID_ARGUMENT,
  GrpcCode.NOT_FOUND,
  GrpcCode.FAILED_PRECONDITION,
  GrpcCode.ALREADY_EXISTS,
  GrpcCode.ABORTED,
  GrpcCode.RESOURCE_EXHAUSTED,
]);

/** What is wrong with `outcome`, or undefined when it follows the rule. */
export function ruleBroken(outcome: Outcome): string | undefined {
  if (outcome.code === GrpcCode.OK) return undefined;
  const name = GrpcCode[outcome.code];
  if (!DOCUMENTED.has(outcome.code)) return `${name}: ${outcome.status?.message ?? ''}`;
  if (outcome.code === GrpcCode.INVALID_ARGUMENT && (outcome.status?.violations.length ?? 0) === 0)
    return `INVALID_ARGUMENT without field violations: ${outcome.status?.message ?? ''}`;
  return undefined;
}

/** Strings that have broken parsers, maps and key schemes before. */
export const NASTY_STRINGS = [
  '',
  ' ',
  '__proto__',
  'constructor',
  'prototype',
  'toString',
  'hasOwnProperty',
  'valueOf',
  '\uD800',
  'a\uDC00b',
  '\u0000',
  'a\u0000b',
  'a\u0001b',
  'é',
  '😀',
  'x'.repeat(64),
  'x'.repeat(129),
  'x'.repeat(257),
  '€'.repeat(200),
  'a:b',
  'a/b',
  'a|b',
  'a.b',
  'a:*',
  '*',
  '$where',
  '-a',
  'A',
  '0',
  'null',
  'NaN',
  'a\nb',
];

export function nastyString(common: readonly string[] = []): fc.Arbitrary<string> {
  return fc.oneof(
    { arbitrary: fc.constantFrom(...NASTY_STRINGS), weight: 3 },
    { arbitrary: fc.string({ maxLength: 30 }), weight: 2 },
    { arbitrary: fc.string({ unit: 'binary', maxLength: 20 }), weight: 1 },
    { arbitrary: fc.stringMatching(/^[a-z][a-z0-9_-]{0,12}$/), weight: 2 },
    ...(common.length > 0 ? [{ arbitrary: fc.constantFrom(...common), weight: 4 }] : []),
  );
}

export const NASTY_NUMBERS = [
  0,
  -0,
  1,
  -1,
  0.5,
  1.0000001,
  NaN,
  Infinity,
  -Infinity,
  Number.MAX_VALUE,
  Number.MIN_VALUE,
  -Number.MAX_VALUE,
  2 ** 31,
  2 ** 53,
  -(2 ** 53),
  1e-300,
];

export function nastyNumber(): fc.Arbitrary<number> {
  return fc.oneof(fc.constantFrom(...NASTY_NUMBERS), fc.double(), fc.integer());
}

/** Int64 values as the writer takes them (bigint beyond what a number holds). */
export function nastyInt64(): fc.Arbitrary<number> {
  return fc.oneof(
    fc.constantFrom<unknown>(
      0,
      1,
      -1,
      2 ** 53 - 1,
      -(2 ** 53 - 1),
      2n ** 53n,
      2n ** 63n - 1n,
      -(2n ** 63n),
      Date.now(),
      Date.now() + 86_400_000 * 2,
    ),
    fc.integer(),
    fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
  ) as fc.Arbitrary<number>;
}

/** An enum field value, known or not. */
export function nastyEnum(known: number): fc.Arbitrary<number> {
  return fc.oneof(
    fc.integer({ min: 0, max: known }),
    fc.constantFrom(-1, known + 1, 2 ** 31 - 1, -(2 ** 31)),
  );
}

/**
 * A Date, in or out of a Timestamp's range, or an object posing as one whose conversion gives
 * negative or oversized nanos (ts-proto converts with getTime()).
 */
export function nastyDate(): fc.Arbitrary<Date> {
  const now = Date.now();
  return fc.oneof(
    fc.constantFrom(
      new Date(now),
      new Date(now + 3_600_000),
      new Date(now + 30_000),
      new Date(now - 3_600_000),
      new Date(0),
      new Date(-1),
      new Date(-62_135_596_800_001),
      new Date(253_402_300_800_000),
      new Date(8.64e15),
      new Date(-8.64e15),
    ),
    fc.date({ noInvalidDate: true }),
    fc.integer({ min: -2_000_000, max: 2_000_000 }).map((ms) => new Date(now + ms)),
  );
}

/** A JSON value for Struct fields: nested, with nasty keys and numbers. */
export function nastyJson(maxDepth = 6): fc.Arbitrary<unknown> {
  const key = nastyString([
    'country',
    'tier',
    'app',
    'version',
    '$where',
    '$regex',
    '$in',
    '$gt',
    '$function',
    '$expr',
    '$eq',
    '$not',
    '$elemMatch',
    '$and',
    '$or',
    '$size',
    '$exists',
    '$options',
    '$all',
    '$nin',
    '$ne',
    '$foo',
  ]);
  const leaf = fc.oneof(
    fc.constant(null),
    fc.boolean(),
    nastyNumber(),
    nastyString([
      'SE',
      'US',
      '^(a+)+$',
      '(a|aa)+',
      '\\1',
      '(?=a)',
      '[',
      'a{1000}{1000}',
      '.*.*.*.*=',
    ]),
  );
  return fc.letrec((tie) => ({
    value: fc.oneof(
      { depthSize: 'small', withCrossShrink: true, maxDepth },
      leaf,
      fc.array(tie('value'), { maxLength: 4 }),
      fc.dictionary(key, tie('value'), { maxKeys: 4 }),
    ),
  })).value;
}

/** `{a: {a: … leaf}}` `depth` levels deep. */
export function nested(depth: number, leaf: unknown = 1, key = 'a'): Record<string, unknown> {
  let value: unknown = leaf;
  for (let i = 0; i < depth; i++) value = { [key]: value };
  return value as Record<string, unknown>;
}

/** A generated request message's codec (ts-proto: `fromPartial`, `encode`). */
export interface RequestCodec {
  fromPartial(value: unknown): unknown;
  encode(message: unknown): { finish(): Uint8Array };
}

/** The codec of `<Method>Request` in a generated module, for the method named `method`. */
export function requestCodec(generated: object, method: string): RequestCodec {
  const name = `${method.charAt(0).toUpperCase()}${method.slice(1)}Request`;
  const codec = (generated as Record<string, RequestCodec | undefined>)[name];
  if (codec === undefined) throw new Error(`no ${name} in the generated module`);
  return codec;
}

function shown(request: unknown): string {
  return JSON.stringify(request, (_key, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v)).slice(
    0,
    1500,
  );
}

/**
 * Property: every request `requests` draws, sent to `path`, is answered OK or as the rule for bad
 * input says; when `unchanged` is given (a mutation), a refused request leaves what it reads as
 * it was. A request the codec cannot encode is skipped.
 */
export async function assertAnswersBadInput(options: {
  readonly raw: RawCaller;
  readonly path: string;
  readonly codec: RequestCodec;
  readonly requests: fc.Arbitrary<unknown>;
  readonly runs: number;
  readonly unchanged?: () => Promise<string>;
}): Promise<void> {
  const { raw, path, codec, requests, runs, unchanged } = options;
  await fc.assert(
    fc.asyncProperty(requests, async (request) => {
      let bytes: Uint8Array;
      try {
        bytes = codec.encode(codec.fromPartial(request)).finish();
      } catch {
        return;
      }
      const before = unchanged === undefined ? '' : await unchanged();
      const outcome = await raw.call(path, bytes);
      const broken = ruleBroken(outcome);
      if (broken) throw new Error(`${path}: ${broken} :: ${shown(request)}`);
      if (
        unchanged !== undefined &&
        outcome.code !== GrpcCode.OK &&
        (await unchanged()) !== before
      ) {
        throw new Error(`${path} failed with ${GrpcCode[outcome.code]} but changed state`);
      }
    }),
    { numRuns: runs, endOnFailure: true },
  );
}

/** Property: bytes that are no request message get no UNKNOWN or INTERNAL from any of `paths`. */
export async function assertRawBytesRefused(
  raw: RawCaller,
  paths: readonly string[],
  runs: number,
): Promise<void> {
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(...paths),
      fc.uint8Array({ maxLength: 64 }),
      async (path, bytes) => {
        const broken = ruleBroken(await raw.call(path, bytes));
        if (broken && !broken.includes('not a message this server can decode')) {
          throw new Error(`${path}: ${broken} :: ${Buffer.from(bytes).toString('hex')}`);
        }
      },
    ),
    { numRuns: runs },
  );
}
