/**
 * The rendered results Resolve sends: for every result, the message a response carries and the
 * record a token carries, and entries that are exactly the generated encoders' bytes for them,
 * whether the result is shared (kept in the snapshot's arena) or made for one resolve (STICKY),
 * in either view.
 */
import { ResolveTokenBody } from '../../../gen/ts/tandem/assignment/internal/v1/resolve_token';
import { AssignmentReason } from '../../../gen/ts/tandem/assignment/v1/assignment';
import { ResolveResponse } from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import type { EncodedFields } from '../../platform/src/grpc/wire';
import { buildSnapshot, type UnitContext } from '../src/domain';
import { RenderedResults } from '../src/handlers/rendered-results';
import { configuration, experiment } from './domain/fixtures';

const NOW = Date.UTC(2026, 0, 1);

function unit(id: string, overrides: Partial<UnitContext> = {}): UnitContext {
  return { id, type: 'user', attributes: {}, surfaces: ['home'], now: NOW, ...overrides };
}

function bytesOf(fields: EncodedFields): Buffer {
  return Buffer.concat(
    fields.sources.map((source, i) =>
      source.subarray(fields.ranges[2 * i] ?? 0, fields.ranges[2 * i + 1] ?? 0),
    ),
  );
}

const snapshot = buildSnapshot(
  configuration({
    experiments: [
      experiment({
        id: 'a-payload',
        etag: '3',
        variants: [
          { key: 'control', weight: 0.5 },
          { key: 'treatment', weight: 0.5, payload: { policy: 'bandit-v2', depth: [1, 2] } },
        ],
      }),
      experiment({ id: 'b-targeted', condition: { country: 'SE' } }),
      experiment({
        id: 'c-half-covered',
        coverage: 0.5,
        etag: '2.5',
        layerId: 'l',
        layerRange: { start: 0, end: 1 },
      }),
      experiment({ id: 'd-sticky', sticky: true }),
    ],
  }),
);

describe('RenderedResults', () => {
  it('hands over entries that are the generated encodings of the messages and records', () => {
    const rendered = new RenderedResults(snapshot);
    for (let i = 0; i < 300; i++) {
      const context = unit(`user-${i}`, {
        attributes: { country: i % 2 ? 'SE' : 'US' },
        sticky:
          i % 3 === 0
            ? new Map([['d-sticky', { variantKey: 'treatment', allocationSequence: 0 }]])
            : undefined,
      });
      const resolution = i % 5 === 0 ? snapshot.resolve(context) : snapshot.resolveServed(context);
      // The FULL view on every other unit, so that each view renders after the other.
      const full = i % 2 === 1;
      const result = rendered.render(resolution.assignments, full);

      expect(
        result.assignments.map((a) => [
          a.experimentId,
          a.variantKey,
          a.reason,
          a.payloadJson,
          a.layerId,
          a.experimentEtag,
        ]),
      ).toEqual(
        resolution.assignments.map((r) => [
          r.experiment.id,
          r.variant.key,
          r.reason,
          r.variant.key === 'treatment' && r.experiment.id === 'a-payload'
            ? '{"policy":"bandit-v2","depth":[1,2]}'
            : '',
          full ? r.experiment.layerId : '',
          full ? r.experiment.etag : '',
        ]),
      );
      expect(bytesOf(result.responseEntries)).toEqual(
        Buffer.from(
          ResolveResponse.encode(
            ResolveResponse.fromPartial({ assignments: result.assignments }),
          ).finish(),
        ),
      );
      const inExperiment = resolution.assignments.filter((r) => r.inExperiment);
      expect(result.inExperiment.map((a) => [a.experimentId, a.variantKey, a.reason])).toEqual(
        inExperiment.map((r) => [r.experiment.id, r.variant.key, r.reason]),
      );
      expect(bytesOf(result.tokenEntries)).toEqual(
        Buffer.from(
          ResolveTokenBody.encode(
            ResolveTokenBody.fromPartial({
              assignments: result.inExperiment.map((a) => ({ ...a, surfaces: [...a.surfaces] })),
            }),
          ).finish(),
        ),
      );
    }
  });

  it('returns the same frozen message for every unit that gets a shared result', () => {
    const rendered = new RenderedResults(snapshot);
    const messages = new Map<string, object>();
    for (let i = 0; i < 200; i++) {
      const resolution = snapshot.resolveServed(unit(`user-${i}`));
      const result = rendered.render(resolution.assignments);
      result.assignments.forEach((message, j) => {
        const key = `${resolution.assignments[j]?.key}`;
        expect(Object.isFrozen(message)).toBe(true);
        expect(messages.get(key) ?? message).toBe(message);
        messages.set(key, message);
      });
    }
    expect(messages.size).toBeGreaterThan(1);
  });

  it('renders a sticky result for its resolve only, with what the unit stored', () => {
    const rendered = new RenderedResults(snapshot);
    const sticky = new Map([['d-sticky', { variantKey: 'treatment', allocationSequence: 0 }]]);
    const resolution = snapshot.resolveServed(unit('user-1', { sticky }));
    const index = resolution.assignments.findIndex((r) => r.experiment.id === 'd-sticky');
    expect(resolution.assignments[index]?.key).toBe(-1);
    const result = rendered.render(resolution.assignments);
    expect(result.assignments[index]).toMatchObject({
      variantKey: 'treatment',
      reason: AssignmentReason.ASSIGNMENT_REASON_STICKY,
      inExperiment: true,
    });
    expect(Object.isFrozen(result.assignments[index])).toBe(false);
  });

  it('keeps entries handed over before the arena grew readable and unchanged', () => {
    // Enough distinct shared results (one per experiment and variant) to outgrow the first arena.
    const payload = { blob: 'x'.repeat(600) };
    const many = buildSnapshot(
      configuration({
        experiments: Array.from({ length: 300 }, (_, i) =>
          experiment({
            id: `exp-${String(i).padStart(3, '0')}`,
            variants: [
              { key: 'control', weight: 0.5, payload },
              { key: 'treatment', weight: 0.5, payload },
            ],
          }),
        ),
      }),
    );
    const rendered = new RenderedResults(many);
    const first = rendered.render(many.resolveServed(unit('user-0')).assignments);
    const before = bytesOf(first.responseEntries);
    for (let i = 1; i < 40; i++) rendered.render(many.resolveServed(unit(`user-${i}`)).assignments);
    expect(bytesOf(first.responseEntries)).toEqual(before);
    expect(ResolveResponse.decode(before).assignments).toHaveLength(300);
    const last = rendered.render(many.resolveServed(unit('user-0')).assignments);
    expect(bytesOf(last.responseEntries)).toEqual(before);
    expect(last.responseEntries.sources[0]).not.toBe(first.responseEntries.sources[0]);
  });
});
