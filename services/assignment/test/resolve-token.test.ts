/**
 * The resolve token's format, checked against what it is documented to be rather than against the
 * signer's own output: base64url of a `ResolveTokenBody`, byte for byte what the generated encoder
 * makes (whether assignments were encoded once, as shared ones are, or not), followed by the first
 * 16 bytes of its HMAC-SHA256 with the deployment's key. Tokens round-trip, and anything
 * tampered with or malformed is refused with INVALID_ARGUMENT.
 */
import { createHmac } from 'node:crypto';
import fc from 'fast-check';
import { ResolveTokenBody } from '../../../gen/ts/tandem/assignment/internal/v1/resolve_token';
import { InvalidArgumentError } from '../../platform/src/errors';
import {
  ResolveTokens,
  TOKEN_VALIDITY_MS,
  type ResolveRecord,
  type TokenAssignment,
} from '../src/resolve-token';

const KEY = 'a-deployment-secret-ü';
const text = fc.oneof(
  fc.string({ maxLength: 16 }),
  fc.string({ unit: 'binary', maxLength: 8 }),
  fc.constantFrom('home', 'control', 'treatment', '1'),
);

const assignment = fc.record({
  experimentId: text,
  variantKey: text,
  reason: fc.integer({ min: 1, max: 9 }),
  etag: text,
  layerId: text,
  surfaces: fc.array(text, { maxLength: 3 }),
  allocationSequence: fc.nat(),
});

const record: fc.Arbitrary<ResolveRecord> = fc.record({
  unitId: text,
  unitType: text,
  resolveId: fc.oneof(
    fc.uuid(),
    fc.uuid().map((u) => u.toUpperCase()),
    text,
  ),
  // Negative numbers cannot come from a resolve, but take the generated encoder's path: covered too.
  resolveTime: fc.oneof(fc.integer({ min: 0, max: 4e12 }), fc.integer({ min: -4e12, max: -1 })),
  configVersion: fc.oneof(fc.nat(), fc.integer({ min: -1000, max: -1 })),
  assignments: fc.array(assignment, { maxLength: 12 }),
  holdouts: fc.array(
    fc.record({
      holdoutId: text,
      heldOut: fc.boolean(),
      surfaces: fc.array(text, { maxLength: 3 }),
      etag: text,
    }),
    { maxLength: 3 },
  ),
});

/** A resolve with nothing in it, resolved at 1,000 ms. */
const SMALL_RECORD: ResolveRecord = {
  unitId: 'u',
  unitType: 'user',
  resolveId: 'r',
  resolveTime: 1_000,
  configVersion: 3,
  assignments: [],
  holdouts: [],
};

function expectRefused(run: () => unknown, reason: string): void {
  let caught: unknown;
  try {
    run();
  } catch (error) {
    caught = error;
  }
  expect(caught).toBeInstanceOf(InvalidArgumentError);
  expect((caught as InvalidArgumentError).violations[0]).toMatchObject({
    field: 'resolve_token',
    reason,
  });
}

function mac(body: Uint8Array): Buffer {
  return createHmac('sha256', KEY).update(body).digest().subarray(0, 16);
}

/** The `assignments` entry of `a` in a token body, as the generated encoder writes it. */
function generatedEntry(a: TokenAssignment): Buffer {
  return Buffer.from(
    ResolveTokenBody.encode(
      ResolveTokenBody.fromPartial({ assignments: [{ ...a, surfaces: [...a.surfaces] }] }),
    ).finish(),
  );
}

/** The entries of `assignments` handed over as ranges of one arena, after `padding` other bytes. */
function handedOver(assignments: readonly TokenAssignment[], padding: number) {
  const entries = assignments.map(generatedEntry);
  const arena = Buffer.alloc(padding + entries.reduce((n, e) => n + e.length, 0), 0xee);
  const ranges: number[] = [];
  let at = padding;
  entries.forEach((entry) => {
    entry.copy(arena, at);
    ranges.push(at, at + entry.length);
    at += entry.length;
  });
  return { sources: entries.map(() => arena), ranges };
}

/** A token over arbitrary body bytes, signed as the service signs (for malformed bodies). */
function signBytes(body: Uint8Array): string {
  return Buffer.concat([body, mac(body)]).toString('base64url');
}

describe('ResolveTokens', () => {
  const tokens = new ResolveTokens(KEY);

  it('is base64url(ResolveTokenBody) with a 128-bit HMAC-SHA256 and verifies back', () => {
    fc.assert(
      fc.property(record, fc.option(fc.nat(40)), (input, padding) => {
        // Signed from the records, or from their entries encoded beforehand (as Resolve does).
        const token =
          padding === null
            ? tokens.sign(input)
            : tokens.sign(input, handedOver(input.assignments, padding));
        expect(token).toMatch(/^[A-Za-z0-9_-]+$/);
        const bytes = Buffer.from(token, 'base64url');
        const body = bytes.subarray(0, bytes.length - 16);
        expect(bytes.subarray(body.length)).toEqual(mac(body));
        const uuid = /^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$/.test(input.resolveId);
        const expected: ResolveTokenBody = {
          unitId: input.unitId,
          unitType: input.unitType,
          resolveUuid: Buffer.from(uuid ? input.resolveId.replaceAll('-', '') : '', 'hex'),
          resolveId: uuid ? '' : input.resolveId,
          resolveTimeMs: input.resolveTime,
          configVersion: input.configVersion,
          assignments: input.assignments.map((a) => ({ ...a, surfaces: [...a.surfaces] })),
          holdouts: input.holdouts.map((h) => ({ ...h, surfaces: [...h.surfaces] })),
        };
        expect(body).toEqual(Buffer.from(ResolveTokenBody.encode(expected).finish()));
        expect(tokens.verify(token, input.resolveTime)).toEqual(
          JSON.parse(JSON.stringify(input)) as ResolveRecord,
        );
      }),
      { numRuns: 500 },
    );
  });

  it('refuses a token signed with another key, or with any character changed', () => {
    fc.assert(
      fc.property(record, fc.nat(), (input, position) => {
        const token = tokens.sign(input);
        expectRefused(
          () => new ResolveTokens('another-secret').verify(token, input.resolveTime),
          'RESOLVE_TOKEN_INVALID',
        );
        const at = position % token.length;
        const changed = token.charAt(at) === 'A' ? 'B' : 'A';
        const tampered = token.slice(0, at) + changed + token.slice(at + 1);
        // Also where the change only touches the last character's unused bits, leaving the bytes
        // the same: not the token the service made.
        expectRefused(() => tokens.verify(tampered, input.resolveTime), 'RESOLVE_TOKEN_INVALID');
      }),
      { numRuns: 200 },
    );
  });

  it('refuses a token that is not exactly base64url as the service writes it', () => {
    const token = tokens.sign(SMALL_RECORD);
    expect(tokens.verify(token, SMALL_RECORD.resolveTime)).toEqual(SMALL_RECORD);
    // Each of these decodes, leniently, to the same signed bytes.
    const variants = [
      `${token}=`,
      `${token}!!==`,
      `${token.slice(0, 8)} \n${token.slice(8)}`,
      ` ${token}`,
      token.replace(/-/g, '+').replace(/_/g, '/'),
    ].filter((variant) => variant !== token);
    expect(variants.length).toBeGreaterThanOrEqual(4);
    for (const variant of variants) {
      expect(Buffer.from(variant, 'base64url')).toEqual(Buffer.from(token, 'base64url'));
      expectRefused(
        () => tokens.verify(variant, SMALL_RECORD.resolveTime),
        'RESOLVE_TOKEN_INVALID',
      );
    }
  });

  it('computes HMAC-SHA256 as RFC 4231 gives it, for short and longer-than-a-block keys', () => {
    // RFC 4231 test case 2: key "Jefe". Its data is not a token body, so a token made of it with
    // the right MAC passes the signature check and is then refused as malformed; with the MAC
    // changed, as not signed.
    const data = Buffer.from('what do ya want for nothing?');
    const rfcMac = Buffer.from(
      '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843',
      'hex',
    );
    const jefe = new ResolveTokens('Jefe');
    const token = (tag: Buffer): string =>
      Buffer.concat([data, tag.subarray(0, 16)]).toString('base64url');
    const failure = (run: () => unknown): string | undefined => {
      try {
        run();
      } catch (error) {
        return (error as InvalidArgumentError).violations[0]?.description;
      }
      return undefined;
    };
    expect(failure(() => jefe.verify(token(rfcMac), 0))).toBe('is malformed');
    const wrong = Buffer.from(rfcMac);
    wrong[0] = (wrong[0] ?? 0) ^ 1;
    expect(failure(() => jefe.verify(token(wrong), 0))).toBe('is not signed by this deployment');

    // A key longer than SHA-256's 64-byte block is hashed first (RFC 2104); Node's createHmac is
    // the reference.
    const longKey = 'k'.repeat(64) + '-and-then-some-ü';
    const input = SMALL_RECORD;
    const signed = Buffer.from(new ResolveTokens(longKey).sign(input), 'base64url');
    const body = signed.subarray(0, signed.length - 16);
    expect(signed.subarray(body.length)).toEqual(
      createHmac('sha256', longKey).update(body).digest().subarray(0, 16),
    );
  });

  it('refuses empty, too short, expired and signed-but-malformed tokens', () => {
    expectRefused(() => tokens.verify('', 0), 'REQUIRED');
    expectRefused(() => tokens.verify('too-short', 0), 'RESOLVE_TOKEN_INVALID');
    const input = SMALL_RECORD;
    const token = tokens.sign(input);
    expect(tokens.verify(token, 1_000 + TOKEN_VALIDITY_MS)).toEqual(input);
    expectRefused(() => tokens.verify(token, 1_001 + TOKEN_VALIDITY_MS), 'RESOLVE_TOKEN_EXPIRED');

    const bytes = ResolveTokenBody.encode({
      ...ResolveTokenBody.fromPartial({ unitId: 'u', resolveTimeMs: 1_000 }),
      resolveUuid: Buffer.alloc(5),
    }).finish();
    expectRefused(() => tokens.verify(signBytes(bytes), 1_000), 'RESOLVE_TOKEN_INVALID');
    // Bytes that are not a ResolveTokenBody at all (a truncated varint).
    expectRefused(
      () => tokens.verify(signBytes(Buffer.from([0x10, 0xff])), 0),
      'RESOLVE_TOKEN_INVALID',
    );
  });
});
