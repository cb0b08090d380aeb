/**
 * The resolve token: what a Resolve computed, signed so that any replica can log its exposures on
 * Apply without storing anything per request. Self-contained (unit, resolve id and time, config
 * version, the in-experiment assignments and holdout memberships; never the attributes), signed
 * with the deployment's key, valid for 24 hours.
 *
 * Format: base64url(body ‖ MAC), the body being a `tandem.assignment.internal.v1.ResolveTokenBody`
 * and the MAC the first 16 bytes of its HMAC-SHA256. Every response carries a token, so signing is
 * on the hot path: the assignments the evaluator shares between units are encoded once (see
 * {@link sharedTokenAssignment}), a body is written by copying their bytes after the few per-call
 * fields (byte for byte what the generated encoder produces) and the MAC right after it, so the
 * token is made as one string.
 */
import { createHmac, createSecretKey, timingSafeEqual, type KeyObject } from 'node:crypto';
import {
  ResolveTokenBody,
  TokenAssignment as AssignmentMessage,
  TokenHoldout as HoldoutMessage,
} from '../../../gen/ts/tandem/assignment/internal/v1/resolve_token';
import { InvalidArgumentError } from '../../platform/src/errors';
import {
  isPlainCount,
  lengthDelimited,
  maxStringSize,
  writeString,
  writeVarint,
} from '../../platform/src/grpc/wire';

/** One in-experiment assignment recorded in a token. */
export interface TokenAssignment {
  readonly experimentId: string;
  readonly variantKey: string;
  readonly reason: number;
  readonly etag: string;
  readonly layerId: string;
  readonly surfaces: readonly string[];
  readonly allocationSequence: number;
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

/** The MAC's length: HMAC-SHA256 truncated to 128 bits (RFC 2104 §5 allows half or more). */
const MAC_BYTES = 16;

const CANONICAL_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function invalid(description: string, reason = 'RESOLVE_TOKEN_INVALID'): InvalidArgumentError {
  return new InvalidArgumentError(
    `resolve_token ${description}`,
    [{ field: 'resolve_token', description, reason }],
    { reason },
  );
}

function assignmentMessage(a: TokenAssignment): AssignmentMessage {
  return { ...a, surfaces: [...a.surfaces] };
}

/** The generated message for a record (the reference the fast path must equal). */
function tokenBody(record: ResolveRecord): ResolveTokenBody {
  const uuid = CANONICAL_UUID.test(record.resolveId);
  return {
    unitId: record.unitId,
    unitType: record.unitType,
    resolveUuid: uuid ? Buffer.from(record.resolveId.replaceAll('-', ''), 'hex') : Buffer.alloc(0),
    resolveId: uuid ? '' : record.resolveId,
    resolveTimeMs: record.resolveTime,
    configVersion: record.configVersion,
    assignments: record.assignments.map(assignmentMessage),
    holdouts: record.holdouts.map((h) => ({ ...h, surfaces: [...h.surfaces] })),
  };
}

/** Shared assignments' complete `assignments` entries (tag, length, message bytes). */
const encodedAssignments = new WeakMap<TokenAssignment, Buffer>();

function assignmentEntry(a: TokenAssignment): Buffer {
  return lengthDelimited(7, AssignmentMessage.encode(assignmentMessage(a)).finish());
}

/**
 * A frozen copy of `assignment` whose token bytes are encoded once, for assignments recorded in
 * many tokens (the evaluator's shared results): signing then copies its bytes.
 */
export function sharedTokenAssignment(assignment: TokenAssignment): TokenAssignment {
  const shared = Object.freeze({
    ...assignment,
    surfaces: Object.freeze([...assignment.surfaces]),
  });
  encodedAssignments.set(shared, assignmentEntry(shared));
  return shared;
}

/** Reused between calls (writing a body is synchronous); grown for a body that does not fit. */
let scratch = Buffer.allocUnsafe(16 * 1024);

/** Lowercase hex digit value (the UUID was checked to be canonical). */
function hexDigit(code: number): number {
  return code <= 57 ? code - 48 : code - 87;
}

/** The 16 bytes of a canonical UUID. */
function writeUuid(out: Buffer, at: number, uuid: string): number {
  let position = at;
  for (let i = 0; i < uuid.length; i += 2) {
    if (uuid.charCodeAt(i) === 45) i++; // '-'
    out[position++] = (hexDigit(uuid.charCodeAt(i)) << 4) | hexDigit(uuid.charCodeAt(i + 1));
  }
  return position;
}

/**
 * `ResolveTokenBody.encode(tokenBody(record))` into the scratch buffer, copying the shared
 * assignments' bytes, with {@link MAC_BYTES} bytes of room after it; returns the body's length.
 */
function encodeBody(record: ResolveRecord): number {
  const { unitId, unitType, resolveId, resolveTime, configVersion } = record;
  if (!isPlainCount(resolveTime) || !isPlainCount(configVersion)) {
    const bytes = ResolveTokenBody.encode(tokenBody(record)).finish();
    if (bytes.length + MAC_BYTES > scratch.length) scratch = Buffer.allocUnsafe(bytes.length * 2);
    scratch.set(bytes);
    return bytes.length;
  }
  const entries: Buffer[] = [];
  let bound =
    maxStringSize(unitId) + maxStringSize(unitType) + maxStringSize(resolveId) + 40 + MAC_BYTES;
  for (const a of record.assignments) {
    const bytes = encodedAssignments.get(a) ?? assignmentEntry(a);
    entries.push(bytes);
    bound += bytes.length;
  }
  for (const h of record.holdouts) {
    const bytes = lengthDelimited(
      8,
      HoldoutMessage.encode({ ...h, surfaces: [...h.surfaces] }).finish(),
    );
    entries.push(bytes);
    bound += bytes.length;
  }
  if (bound > scratch.length) scratch = Buffer.allocUnsafe(Math.max(bound, 2 * scratch.length));
  const out = scratch;
  let at = 0;
  if (unitId !== '') {
    out[at++] = 10;
    at = writeString(out, at, unitId);
  }
  if (unitType !== '') {
    out[at++] = 18;
    at = writeString(out, at, unitType);
  }
  if (CANONICAL_UUID.test(resolveId)) {
    out[at++] = 26;
    out[at++] = 16;
    at = writeUuid(out, at, resolveId);
  } else if (resolveId !== '') {
    out[at++] = 34;
    at = writeString(out, at, resolveId);
  }
  if (resolveTime !== 0) {
    out[at++] = 40;
    at = writeVarint(out, at, resolveTime);
  }
  if (configVersion !== 0) {
    out[at++] = 48;
    at = writeVarint(out, at, configVersion);
  }
  for (const bytes of entries) {
    out.set(bytes, at);
    at += bytes.length;
  }
  return at;
}

/** The record a decoded body describes. */
function fromBody(body: ResolveTokenBody): ResolveRecord {
  if (body.resolveUuid.length !== 0 && body.resolveUuid.length !== 16) {
    throw invalid('is malformed');
  }
  const hex = body.resolveUuid.toString('hex');
  return {
    unitId: body.unitId,
    unitType: body.unitType,
    resolveId:
      hex === ''
        ? body.resolveId
        : `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`,
    resolveTime: body.resolveTimeMs,
    configVersion: body.configVersion,
    assignments: body.assignments,
    holdouts: body.holdouts,
  };
}

export class ResolveTokens {
  private readonly key: KeyObject;

  constructor(key: string) {
    // A KeyObject is imported once; a string key would be imported on every HMAC.
    this.key = createSecretKey(Buffer.from(key, 'utf8'));
  }

  sign(record: ResolveRecord): string {
    const length = encodeBody(record);
    this.mac(scratch.subarray(0, length)).copy(scratch, length, 0, MAC_BYTES);
    return scratch.toString('base64url', 0, length + MAC_BYTES);
  }

  /** Checks the signature and age; throws INVALID_ARGUMENT (RESOLVE_TOKEN_INVALID / _EXPIRED). */
  verify(token: string, now: number): ResolveRecord {
    if (token === '') throw invalid('is required', 'REQUIRED');
    const bytes = Buffer.from(token, 'base64url');
    if (bytes.length < MAC_BYTES) throw invalid('is malformed');
    const body = bytes.subarray(0, bytes.length - MAC_BYTES);
    const expected = this.mac(body).subarray(0, MAC_BYTES);
    if (!timingSafeEqual(bytes.subarray(body.length), expected)) {
      throw invalid('is not signed by this deployment');
    }
    let decoded: ResolveTokenBody;
    try {
      decoded = ResolveTokenBody.decode(body);
    } catch {
      throw invalid('is malformed');
    }
    const record = fromBody(decoded);
    if (now - record.resolveTime > TOKEN_VALIDITY_MS) {
      throw invalid('is older than 24 hours', 'RESOLVE_TOKEN_EXPIRED');
    }
    return record;
  }

  /** The full HMAC-SHA256 of `body`; tokens carry its first {@link MAC_BYTES} bytes. */
  private mac(body: Uint8Array): Buffer {
    return createHmac('sha256', this.key).update(body).digest();
  }
}
