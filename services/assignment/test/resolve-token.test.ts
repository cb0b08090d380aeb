/**
 * The resolve token's format does not depend on how it is produced: a body that is exactly
 * base64url(JSON.stringify(packed record)) and an HMAC-SHA256 of it with the deployment's key,
 * whether assignments carry their precomputed JSON (shared ones) or not.
 */
import { createHmac } from 'node:crypto';
import fc from 'fast-check';
import {
  ResolveTokens,
  sharedTokenAssignment,
  type ResolveRecord,
  type TokenAssignment,
} from '../src/resolve-token';

const KEY = 'a-deployment-secret-ü';
const text = fc.oneof(fc.string({ maxLength: 16 }), fc.string({ unit: 'binary', maxLength: 8 }));

const assignment = fc.record({
  experimentId: text,
  variantKey: text,
  reason: fc.integer({ min: 1, max: 9 }),
  etag: text,
  layerId: text,
  surfaces: fc.array(text, { maxLength: 3 }),
  allocationSequence: fc.nat(),
  shared: fc.boolean(),
});

const record = fc.record({
  unitId: text,
  unitType: text,
  resolveId: fc.oneof(fc.uuid(), text),
  resolveTime: fc.integer({ min: 0, max: 4e12 }),
  configVersion: fc.nat(),
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

describe('ResolveTokens', () => {
  it('signs base64url(JSON of the packed record) with HMAC-SHA256, and verifies it back', () => {
    const tokens = new ResolveTokens(KEY);
    fc.assert(
      fc.property(record, (generated) => {
        const assignments: TokenAssignment[] = generated.assignments.map(({ shared, ...a }) =>
          shared ? sharedTokenAssignment(a) : a,
        );
        const input: ResolveRecord = { ...generated, assignments };
        const token = tokens.sign(input);
        const [body = '', mac = ''] = token.split('.');
        const packed = {
          u: input.unitId,
          t: input.unitType,
          r: input.resolveId,
          rt: input.resolveTime,
          cv: input.configVersion,
          a: generated.assignments.map((a) => [
            a.experimentId,
            a.variantKey,
            a.reason,
            a.etag,
            a.layerId,
            a.surfaces,
            a.allocationSequence,
          ]),
          h: input.holdouts.map((h) => [h.holdoutId, h.heldOut ? 1 : 0, h.surfaces, h.etag]),
        };
        expect(Buffer.from(body, 'base64url').toString('utf8')).toBe(JSON.stringify(packed));
        expect(mac).toBe(createHmac('sha256', KEY).update(body).digest('base64url'));
        expect(tokens.verify(token, input.resolveTime)).toEqual({
          ...generated,
          assignments: generated.assignments.map(({ shared: _shared, ...a }) => a),
        });
      }),
      { numRuns: 500 },
    );
  });
});
