/**
 * The resolve token: what a Resolve computed, signed so that any replica can log its exposures on
 * Apply without storing anything per request. Self-contained (unit, resolve id and time, config
 * version, the in-experiment assignments and holdout memberships; never the attributes), HMAC-SHA256
 * signed with the deployment's key, valid for 24 hours. Format: base64url(JSON) "." base64url(MAC).
 */
import { createHmac, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto';
import { InvalidArgumentError } from '../../platform/src/errors';

/** One in-experiment assignment recorded in a token. */
export interface TokenAssignment {
  readonly experimentId: string;
  readonly variantKey: string;
  readonly reason: number;
  readonly etag: string;
  readonly layerId: string;
  readonly surfaces: readonly string[];
  readonly allocationSequence: number;
  /** Its packed JSON in a token body, when made by {@link sharedTokenAssignment}. */
  readonly packed?: string;
}

/** One holdout membership recorded in a token. */
export interface TokenHoldout {
  readonly holdoutId: string;
  readonly heldOut: boolean;
  readonly surfaces: readonly string[];
  readonly etag: string;
}

export interface ResolveRecord {
  readonly unitId: string;
  readonly unitType: string;
  readonly resolveId: string;
  readonly resolveTime: number;
  readonly configVersion: number;
  readonly assignments: readonly TokenAssignment[];
  readonly holdouts: readonly TokenHoldout[];
}

export const TOKEN_VALIDITY_MS = 24 * 3_600_000;

type PackedAssignment = [string, string, number, string, string, readonly string[], number];
type PackedHoldout = [string, 0 | 1, readonly string[], string];
interface Packed {
  u: string;
  t: string;
  r: string;
  rt: number;
  cv: number;
  a: PackedAssignment[];
  h: PackedHoldout[];
}

function invalid(description: string, reason = 'RESOLVE_TOKEN_INVALID'): InvalidArgumentError {
  return new InvalidArgumentError(
    `resolve_token ${description}`,
    [{ field: 'resolve_token', description, reason }],
    { reason },
  );
}

function pack(a: TokenAssignment): PackedAssignment {
  return [
    a.experimentId,
    a.variantKey,
    a.reason,
    a.etag,
    a.layerId,
    a.surfaces,
    a.allocationSequence,
  ];
}

/**
 * A frozen TokenAssignment carrying its packed JSON, for assignments recorded in many tokens (the
 * evaluator's shared results): signing then copies the text instead of serializing it again.
 */
export function sharedTokenAssignment(assignment: TokenAssignment): TokenAssignment {
  const surfaces = Object.isFrozen(assignment.surfaces)
    ? assignment.surfaces
    : Object.freeze([...assignment.surfaces]);
  const fields: TokenAssignment = { ...assignment, surfaces, packed: undefined };
  return Object.freeze({ ...fields, packed: JSON.stringify(pack(fields)) });
}

export class ResolveTokens {
  private readonly key: KeyObject;

  constructor(key: string) {
    // A KeyObject is imported once; a string key would be imported on every HMAC.
    this.key = createSecretKey(Buffer.from(key, 'utf8'));
  }

  sign(record: ResolveRecord): string {
    // Exactly `JSON.stringify(packed)` for the `Packed` layout, with the assignments' parts cached.
    let assignments = '';
    for (let i = 0; i < record.assignments.length; i++) {
      const a = record.assignments[i];
      if (a === undefined) continue;
      assignments += (i === 0 ? '' : ',') + (a.packed ?? JSON.stringify(pack(a)));
    }
    const holdouts: PackedHoldout[] = record.holdouts.map((h) => [
      h.holdoutId,
      h.heldOut ? 1 : 0,
      h.surfaces,
      h.etag,
    ]);
    const json =
      `{"u":${JSON.stringify(record.unitId)},"t":${JSON.stringify(record.unitType)}` +
      `,"r":${JSON.stringify(record.resolveId)},"rt":${JSON.stringify(record.resolveTime)}` +
      `,"cv":${JSON.stringify(record.configVersion)},"a":[${assignments}]` +
      `,"h":${JSON.stringify(holdouts)}}`;
    const body = Buffer.from(json).toString('base64url');
    return `${body}.${this.mac(body).toString('base64url')}`;
  }

  /** Checks the signature and age; throws INVALID_ARGUMENT (RESOLVE_TOKEN_INVALID / _EXPIRED). */
  verify(token: string, now: number): ResolveRecord {
    if (token === '') throw invalid('is required', 'REQUIRED');
    const dot = token.indexOf('.');
    if (dot <= 0) throw invalid('is malformed');
    const body = token.slice(0, dot);
    const mac = Buffer.from(token.slice(dot + 1), 'base64url');
    const expected = this.mac(body);
    if (mac.length !== expected.length || !timingSafeEqual(mac, expected)) {
      throw invalid('is not signed by this deployment');
    }
    let packed: Packed;
    try {
      packed = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as Packed;
    } catch {
      throw invalid('is malformed');
    }
    if (now - packed.rt > TOKEN_VALIDITY_MS) {
      throw invalid('is older than 24 hours', 'RESOLVE_TOKEN_EXPIRED');
    }
    return {
      unitId: packed.u,
      unitType: packed.t,
      resolveId: packed.r,
      resolveTime: packed.rt,
      configVersion: packed.cv,
      assignments: packed.a.map(
        ([experimentId, variantKey, reason, etag, layerId, surfaces, seq]) => ({
          experimentId,
          variantKey,
          reason,
          etag,
          layerId,
          surfaces,
          allocationSequence: seq,
        }),
      ),
      holdouts: packed.h.map(([holdoutId, heldOut, surfaces, etag]) => ({
        holdoutId,
        heldOut: heldOut === 1,
        surfaces,
        etag,
      })),
    };
  }

  private mac(body: string): Buffer {
    return createHmac('sha256', this.key).update(body).digest();
  }
}
