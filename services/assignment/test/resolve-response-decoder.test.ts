/**
 * The client-side Resolve decoder against the generated one: for many random responses, and for
 * bytes no Tandem server writes (unknown fields, repeated singular fields, padded varints, nested
 * and odd payloads, non-ASCII text, cut-off buffers), it returns what `ResolveResponse.decode`
 * returns, or throws where it throws.
 */
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import fc from 'fast-check';
import { AssignmentReason, type Assignment } from '../../../gen/ts/tandem/assignment/v1/assignment';
import { ResolveResponse } from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { AssignmentClientDefinition, decodeResolveResponse } from '../src/resolve-response-decoder';
import { asEnum } from '../src/handlers/messages';

const text = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.constantFrom('', 'exp-0001', 'treatment', 'layer-3', '1', 'home'),
  fc.string({ unit: 'grapheme', maxLength: 12 }),
  fc.constantFrom('\uFEFFbom', 'é', '__proto__', 'constructor', '0', '10', '2'),
);
const flatValue = fc.oneof(
  text,
  fc.double(),
  fc.constantFrom(0, -0, 1.5, Number.NaN, Infinity),
  fc.boolean(),
  fc.constant(null),
);
const jsonValue: fc.Arbitrary<unknown> = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    flatValue,
    fc.array(tie('value'), { maxLength: 3 }),
    fc.dictionary(text, tie('value'), { maxKeys: 3 }),
  ),
})).value;
const payload = fc.oneof(
  fc.constant(undefined),
  fc.dictionary(text, flatValue, { maxKeys: 5 }),
  fc.dictionary(text, jsonValue, { maxKeys: 3 }),
);
const assignment: fc.Arbitrary<Assignment> = fc.record({
  experimentId: text,
  variantKey: text,
  payload,
  inExperiment: fc.boolean(),
  reason: fc
    .oneof(
      fc.constantFrom(...Object.values(AssignmentReason).filter((r) => typeof r === 'number')),
      fc.integer({ min: -5, max: 1_000_000 }),
    )
    .map((reason) => asEnum<AssignmentReason>(reason)),
  layerId: text,
  holdoutId: text,
  surfaces: fc.array(text, { maxLength: 3 }),
  experimentEtag: text,
  allocationSequence: fc.oneof(fc.nat(1000), fc.maxSafeNat(), fc.constant(2 ** 49)),
});
const response: fc.Arbitrary<ResolveResponse> = fc.record({
  assignments: fc.array(assignment, { maxLength: 6 }),
  holdouts: fc.array(
    fc.record({
      holdoutId: text,
      heldOut: fc.boolean(),
      surfaces: fc.array(text, { maxLength: 2 }),
      holdoutEtag: text,
    }),
    { maxLength: 2 },
  ),
  resolveToken: fc.oneof(text, fc.base64String({ maxLength: 2000 })),
  resolveId: text,
  configVersion: fc.oneof(fc.nat(1000), fc.maxSafeNat()),
  resolveTime: fc.option(
    fc.date({ min: new Date(0), max: new Date(4_102_444_800_000), noInvalidDate: true }),
    { nil: undefined },
  ),
  unknownSurfaces: fc.array(text, { maxLength: 2 }),
  exposures: fc.option(
    fc.record({
      loggedCount: fc.nat(5),
      alreadyLoggedCount: fc.nat(5),
      notInExperimentCount: fc.nat(5),
      droppedCount: fc.nat(5),
      notRunningCount: fc.nat(5),
    }),
    { nil: undefined },
  ),
});

/** The generated decoder's outcome: its message, or that it threw. */
function generated(bytes: Uint8Array): ResolveResponse | 'throws' {
  try {
    return ResolveResponse.decode(bytes);
  } catch {
    return 'throws';
  }
}

function fast(bytes: Uint8Array): ResolveResponse | 'throws' {
  try {
    return decodeResolveResponse(bytes);
  } catch {
    return 'throws';
  }
}

function expectSame(bytes: Uint8Array): void {
  const expected = generated(bytes);
  for (const actual of [fast(bytes), fast(Buffer.from(bytes))]) {
    expect(actual).toEqual(expected);
    // toEqual ignores prototypes (a payload key `__proto__` must not become one), and
    // toStrictEqual takes a payload key `constructor` for one: compared here instead.
    expect(prototypes(actual)).toEqual(prototypes(expected));
  }
}

/** Each object's prototype (`null`, `Object`, `Array`, `Date` or `other`), by path. */
function prototypes(value: unknown, path = '', out: string[] = []): string[] {
  if (value === null || typeof value !== 'object') return out;
  const prototype: unknown = Object.getPrototypeOf(value);
  const name =
    prototype === null
      ? 'null'
      : prototype === Object.prototype
        ? 'Object'
        : prototype === Array.prototype
          ? 'Array'
          : prototype === Date.prototype
            ? 'Date'
            : 'other';
  out.push(`${path}: ${name}`);
  for (const key of Object.keys(value)) {
    prototypes((value as Record<string, unknown>)[key], `${path}.${key}`, out);
  }
  return out;
}

/** An unknown field or a known field in an unexpected wire type, in each wire format. */
const strayField = fc
  .tuple(fc.integer({ min: 1, max: 40 }), fc.constantFrom(0, 1, 2, 5), fc.nat(300))
  .map(([field, wireType, value]) => {
    const writer = new BinaryWriter().uint32((field << 3) | wireType);
    if (wireType === 0) writer.uint64(value);
    else if (wireType === 1) writer.fixed64(value);
    else if (wireType === 2) writer.bytes(new Uint8Array(value % 7));
    else writer.fixed32(value);
    return writer.finish();
  });

function concat(parts: readonly Uint8Array[]): Uint8Array {
  return Buffer.concat(parts.map((part) => Buffer.from(part)));
}

describe('decodeResolveResponse', () => {
  it('returns what the generated decoder returns for any response', () => {
    fc.assert(
      fc.property(response, (message) => {
        expectSame(ResolveResponse.encode(message).finish());
      }),
      { numRuns: 500 },
    );
  });

  it('reads responses with stray fields, inside an assignment too, as the generated decoder does', () => {
    fc.assert(
      fc.property(
        response,
        fc.array(strayField, { maxLength: 3 }),
        assignment,
        strayField,
        (message, strays, extra, strayInside) => {
          const bytes = concat([
            ResolveResponse.encode(message).finish(),
            ...strays,
            // One more assignment, with a stray field of its own.
            new BinaryWriter()
              .uint32(10)
              .bytes(concat([encodeAssignment(extra), strayInside]))
              .finish(),
          ]);
          expectSame(bytes);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('reads repeated singular fields and padded varints as the generated decoder does', () => {
    fc.assert(
      fc.property(response, response, (first, second) => {
        // Every singular field twice: the later one wins (messages too: replaced, not merged).
        expectSame(
          concat([ResolveResponse.encode(first).finish(), ResolveResponse.encode(second).finish()]),
        );
      }),
      { numRuns: 200 },
    );
    // config_version as a padded, ten-byte varint; in_experiment as 2; reason above 2^31.
    expectSame(Uint8Array.from([40, 0x85, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]));
    expectSame(
      new BinaryWriter()
        .uint32(10)
        .bytes(Uint8Array.from([32, 2]))
        .finish(),
    );
    expectSame(
      new BinaryWriter()
        .uint32(10)
        .bytes(
          new BinaryWriter()
            .uint32(40)
            .uint64(2 ** 32 + 5)
            .finish(),
        )
        .finish(),
    );
  });

  it('refuses cut-off bytes where the generated decoder does, and reads the rest alike', () => {
    fc.assert(
      fc.property(response, fc.nat(), (message, cut) => {
        const bytes = ResolveResponse.encode(message).finish();
        expectSame(bytes.subarray(0, bytes.length === 0 ? 0 : cut % bytes.length));
      }),
      { numRuns: 500 },
    );
  });

  it('reads nested payloads to the depth the generated decoder reaches, and refuses deeper ones alike', () => {
    // Each nested object is three messages deep (Struct, entry, Value); the generated decoders
    // give up at 100, which the 33rd nested object's value reaches.
    for (const depth of [1, 20, 31, 32, 33, 34, 40]) {
      let value: unknown = 'leaf';
      for (let i = 0; i < depth; i++) value = { nested: value };
      const bytes = ResolveResponse.encode({
        ...ResolveResponse.fromPartial({}),
        assignments: [{ ...encodeable(), payload: value as Record<string, unknown> }],
      }).finish();
      expectSame(bytes);
      expect(fast(bytes) === 'throws').toBe(depth >= 33);
    }
  });

  it('keeps a payload key `__proto__` out of the prototype, as the generated decoder does', () => {
    for (const value of [null, 'text', 1]) {
      const entry = new BinaryWriter().uint32(10).string('__proto__').uint32(18);
      const valueBytes =
        value === null
          ? new BinaryWriter().uint32(8).int32(0).finish()
          : typeof value === 'string'
            ? new BinaryWriter().uint32(26).string(value).finish()
            : new BinaryWriter().uint32(17).double(value).finish();
      const struct = new BinaryWriter().uint32(10).bytes(entry.bytes(valueBytes).finish()).finish();
      const assignmentBytes = new BinaryWriter().uint32(26).bytes(struct).finish();
      expectSame(new BinaryWriter().uint32(10).bytes(assignmentBytes).finish());
    }
  });

  it('is the Resolve deserializer of AssignmentClientDefinition', () => {
    const bytes = Buffer.from(
      ResolveResponse.encode(
        ResolveResponse.fromPartial({ resolveToken: 't', assignments: [encodeable()] }),
      ).finish(),
    );
    expect(AssignmentClientDefinition.resolve.responseDeserialize(bytes)).toEqual(
      ResolveResponse.decode(bytes),
    );
  });
});

function encodeable(): Assignment {
  return {
    experimentId: 'exp',
    variantKey: 'treatment',
    payload: { policy: 'p1', weight: 0.5, on: true, none: null },
    inExperiment: true,
    reason: AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
    layerId: 'layer',
    holdoutId: '',
    surfaces: ['home'],
    experimentEtag: '3',
    allocationSequence: 7,
  };
}

/** An assignment's message bytes (without the response's field tag and length). */
function encodeAssignment(value: Assignment): Uint8Array {
  const bytes = ResolveResponse.encode({
    ...ResolveResponse.fromPartial({}),
    assignments: [value],
  }).finish();
  // Tag 10, then the length varint, then the message.
  let pos = 1;
  while ((bytes[pos] ?? 0) >= 0x80) pos++;
  return bytes.subarray(pos + 1);
}
