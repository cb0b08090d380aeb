/**
 * The hand-written ResolveResponse serializer against the generated encoder: byte for byte equal
 * over random responses (with assignment entries handed over as ranges of shared arenas or not,
 * payloads, unicode strings, odd numbers that take the fallback), and decoded by the
 * generated decoder to the same message.
 */
import fc from 'fast-check';
import { AssignmentReason, type Assignment } from '../../../gen/ts/tandem/assignment/v1/assignment';
import {
  AssignmentServiceService,
  ResolveResponse,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import {
  resolveServiceDefinition,
  serializeResolveResponse,
  withEncodedAssignments,
} from '../src/handlers/resolve-response';

/** The `assignments` entry of `a` as the generated encoder writes it in a response. */
function generatedEntry(a: Assignment): Buffer {
  return Buffer.from(
    ResolveResponse.encode(ResolveResponse.fromPartial({ assignments: [a] })).finish(),
  );
}

const text = fc.oneof(fc.string({ maxLength: 20 }), fc.string({ unit: 'binary', maxLength: 12 }));
// Negative numbers are rare in practice and take the generated encoder; mostly test the fast path.
const count = fc.oneof(
  { arbitrary: fc.nat(5), weight: 5 },
  { arbitrary: fc.integer({ min: 0, max: 2 ** 31 - 1 }), weight: 5 },
  { arbitrary: fc.integer({ min: -5, max: -1 }), weight: 1 },
);
const int64 = fc.oneof(
  { arbitrary: fc.constant(0), weight: 3 },
  { arbitrary: fc.nat(1000), weight: 3 },
  { arbitrary: fc.maxSafeNat(), weight: 3 },
  { arbitrary: fc.integer({ min: -1000, max: -1 }), weight: 1 },
);

const assignment = fc.record({
  experimentId: text,
  variantKey: text,
  inExperiment: fc.boolean(),
  reason: fc.constantFrom(
    ...Object.values(AssignmentReason).filter((v): v is AssignmentReason => typeof v === 'number'),
  ),
  layerId: text,
  holdoutId: text,
  surfaces: fc.array(text, { maxLength: 3 }),
  experimentEtag: text,
  allocationSequence: int64,
  payloadJson: fc.oneof(
    fc.constant(''),
    fc
      .dictionary(fc.string({ maxLength: 6 }), fc.jsonValue({ maxDepth: 2 }))
      .map((payload) => JSON.stringify(payload)),
  ),
  shared: fc.boolean(),
});

const response = fc.record({
  assignments: fc.array(assignment, { maxLength: 12 }),
  holdouts: fc.array(
    fc.record({
      holdoutId: text,
      heldOut: fc.boolean(),
      surfaces: fc.array(text, { maxLength: 3 }),
      holdoutEtag: text,
    }),
    { maxLength: 3 },
  ),
  resolveToken: fc.oneof(text, fc.string({ minLength: 100, maxLength: 2000 })),
  resolveId: fc.oneof(fc.uuid(), fc.constant(''), text),
  configVersion: int64,
  resolveTime: fc.option(
    fc.date({ min: new Date(-1e12), max: new Date(4e12), noInvalidDate: true }),
    { nil: undefined },
  ),
  unknownSurfaces: fc.array(text, { maxLength: 3 }),
  exposures: fc.option(
    fc.record({
      loggedCount: count,
      alreadyLoggedCount: count,
      notInExperimentCount: count,
      droppedCount: count,
      notRunningCount: count,
    }),
    { nil: undefined },
  ),
});

describe('serializeResolveResponse', () => {
  it('writes exactly the bytes of the generated encoder', () => {
    fc.assert(
      fc.property(response, fc.boolean(), fc.nat(40), (generated, handedOver, padding) => {
        const assignments = generated.assignments.map(({ shared: _, ...fields }) => fields);
        const message: ResolveResponse = { ...generated, assignments };
        if (handedOver) {
          // Shared entries sit in one arena after some other bytes, the rest in their own buffers.
          const arena = Buffer.alloc(padding + 64 * 1024, 0xee);
          let used = padding;
          const sources: Buffer[] = [];
          const ranges: number[] = [];
          generated.assignments.forEach((a, i) => {
            const entry = generatedEntry(assignments[i]!);
            if (a.shared) {
              entry.copy(arena, used);
              sources.push(arena);
              ranges.push(used, used + entry.length);
              used += entry.length;
              used += 3;
            } else {
              sources.push(entry);
              ranges.push(0, entry.length);
            }
          });
          withEncodedAssignments(message, { sources, ranges });
        }
        const expected = Buffer.from(ResolveResponse.encode(message).finish());
        const actual = serializeResolveResponse(message);
        expect(actual.equals(expected)).toBe(true);
        expect(ResolveResponse.decode(actual)).toEqual(ResolveResponse.decode(expected));
      }),
      { numRuns: 1500 },
    );
  });

  it('copies the entries handed over instead of encoding the messages', () => {
    const shared: Assignment = {
      experimentId: 'exp',
      variantKey: 'treatment',
      inExperiment: true,
      reason: AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
      layerId: 'layer-1',
      holdoutId: '',
      surfaces: ['home'],
      experimentEtag: '7',
      allocationSequence: 0,
      payloadJson: '{"policy":"p1","nested":{"list":[1,"two",null,true]}}',
    };
    const entry = generatedEntry(shared);
    const message = ResolveResponse.fromPartial({ assignments: [shared, shared], resolveId: 'r' });
    withEncodedAssignments(message, {
      sources: [entry, entry],
      ranges: [0, entry.length, 0, entry.length],
    });
    // A message changed after its entry was made is still sent as the entry says.
    shared.variantKey = 'changed';
    const decoded = ResolveResponse.decode(serializeResolveResponse(message));
    expect(decoded.assignments.map((a) => a.variantKey)).toEqual(['treatment', 'treatment']);
    expect(JSON.parse(decoded.assignments[0]?.payloadJson ?? '')).toEqual({
      policy: 'p1',
      nested: { list: [1, 'two', null, true] },
    });
  });

  it('is what the registered definition serializes Resolve with, and nothing else changes', () => {
    expect(resolveServiceDefinition.resolve.responseSerialize).toBe(serializeResolveResponse);
    for (const name of Object.keys(
      AssignmentServiceService,
    ) as (keyof typeof AssignmentServiceService)[]) {
      if (name === 'resolve') continue;
      expect(resolveServiceDefinition[name]).toBe(AssignmentServiceService[name]);
    }
    expect({ ...resolveServiceDefinition.resolve, responseSerialize: undefined }).toEqual({
      ...AssignmentServiceService.resolve,
      responseSerialize: undefined,
    });
  });
});
