/**
 * The resolve token: what a Resolve computed, signed so that any replica can log its exposures on
 * Apply without storing anything per request. Self-contained (unit, resolve id and time, config
 * version, the in-experiment assignments and holdout memberships; never the attributes), signed
 * with the deployment's key, valid for 24 hours.
 *
 * Format: base64url(body ‖ MAC), the body being a `tandem.assignment.internal.v1.ResolveTokenBody`
 * and the MAC the first 16 bytes of its HMAC-SHA256. Every response carries a token, so signing is
 * on the hot path: a caller that keeps the encoded entries of the assignments it shares between
 * units (see {@link encodeTokenAssignment}) passes them to {@link ResolveTokens.sign}, which copies
 * them after the few per-call fields (byte for byte what the generated encoder produces), appends
 * the MAC and makes the token as one string.
 */
import { createHash, hash, timingSafeEqual } from 'node:crypto';
import {
  ResolveTokenBody,
  TokenAssignment as AssignmentMessage,
  TokenHoldout as HoldoutMessage,
} from '../../../gen/ts/tandem/assignment/internal/v1/resolve_token';
import { InvalidArgumentError } from '../../platform/src/errors';
import {
  encodedFieldsOf,
  encodedFieldsSize,
  isPlainCount,
  lengthDelimited,
  maxStringSize,
  writeEncodedFields,
  writeString,
  writeVarint,
  type EncodedFields,
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

/**
 * The complete `assignments` entry (tag, length, message) of `assignment` in a token body, for
 * callers that encode the assignments they share between units once.
 */
export function encodeTokenAssignment(assignment: TokenAssignment): Buffer {
  return lengthDelimited(7, AssignmentMessage.encode(assignmentMessage(assignment)).finish());
}

/** SHA-256's block size: HMAC pads its key to one block (RFC 2104). */
const BLOCK_BYTES = 64;

/**
 * Reused between calls (signing is synchronous); grown for a body that does not fit. A body is
 * written after the first {@link BLOCK_BYTES}, where the signer puts its inner key block, so the
 * inner hash of the HMAC runs over the buffer as it is.
 */
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
 * `ResolveTokenBody.encode(tokenBody(record))` into the scratch buffer from {@link BLOCK_BYTES},
 * with {@link MAC_BYTES} bytes of room after it; returns the body's length. `encoded`, when given,
 * holds the entries of `record.assignments`, copied instead of encoded.
 */
function encodeBody(record: ResolveRecord, encoded: EncodedFields | undefined): number {
  const { unitId, unitType, resolveId, resolveTime, configVersion } = record;
  if (!isPlainCount(resolveTime) || !isPlainCount(configVersion)) {
    const bytes = ResolveTokenBody.encode(tokenBody(record)).finish();
    ensureScratch(BLOCK_BYTES + bytes.length + MAC_BYTES);
    scratch.set(bytes, BLOCK_BYTES);
    return bytes.length;
  }
  const assignments = encoded ?? encodedFieldsOf(record.assignments.map(encodeTokenAssignment));
  const holdouts = record.holdouts.map((h) =>
    lengthDelimited(8, HoldoutMessage.encode({ ...h, surfaces: [...h.surfaces] }).finish()),
  );
  let bound =
    BLOCK_BYTES +
    maxStringSize(unitId) +
    maxStringSize(unitType) +
    maxStringSize(resolveId) +
    40 +
    encodedFieldsSize(assignments) +
    MAC_BYTES;
  for (const bytes of holdouts) bound += bytes.length;
  ensureScratch(bound);
  const out = scratch;
  let at = BLOCK_BYTES;
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
  at = writeEncodedFields(out, at, assignments);
  for (const bytes of holdouts) {
    out.set(bytes, at);
    at += bytes.length;
  }
  return at - BLOCK_BYTES;
}

function ensureScratch(bytes: number): void {
  if (bytes > scratch.length) scratch = Buffer.allocUnsafe(Math.max(bytes, 2 * scratch.length));
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
  /** The key padded to a block and XORed with HMAC's ipad (0x36). */
  private readonly innerKeyBlock: Buffer;
  /** The key block XORed with HMAC's opad (0x5c), then room for the inner hash. */
  private readonly outer: Buffer;

  constructor(key: string) {
    let keyBytes = Buffer.from(key, 'utf8');
    if (keyBytes.length > BLOCK_BYTES) keyBytes = createHash('sha256').update(keyBytes).digest();
    this.innerKeyBlock = Buffer.alloc(BLOCK_BYTES, 0x36);
    this.outer = Buffer.alloc(BLOCK_BYTES + 32, 0x5c);
    for (let i = 0; i < keyBytes.length; i++) {
      this.innerKeyBlock[i] = (this.innerKeyBlock[i] ?? 0) ^ (keyBytes[i] ?? 0);
      this.outer[i] = (this.outer[i] ?? 0) ^ (keyBytes[i] ?? 0);
    }
  }

  /**
   * The token of `record`. `encoded`, when given, must be the encoded entries of
   * `record.assignments` (see {@link encodeTokenAssignment}); they are copied rather than encoded.
   */
  sign(record: ResolveRecord, encoded?: EncodedFields): string {
    const length = encodeBody(record, encoded);
    this.innerKeyBlock.copy(scratch, 0);
    this.mac(scratch.subarray(0, BLOCK_BYTES + length)).copy(
      scratch,
      BLOCK_BYTES + length,
      0,
      MAC_BYTES,
    );
    return scratch.toString('base64url', BLOCK_BYTES, BLOCK_BYTES + length + MAC_BYTES);
  }

  /** Checks the signature and age; throws INVALID_ARGUMENT (RESOLVE_TOKEN_INVALID / _EXPIRED). */
  verify(token: string, now: number): ResolveRecord {
    if (token === '') throw invalid('is required', 'REQUIRED');
    const bytes = Buffer.from(token, 'base64url');
    // Node's decoder skips characters outside the alphabet and ignores unused trailing bits, so
    // many strings read as one token; only the one the service wrote is taken.
    if (bytes.length < MAC_BYTES || bytes.toString('base64url') !== token) {
      throw invalid('is malformed');
    }
    const body = bytes.subarray(0, bytes.length - MAC_BYTES);
    const expected = this.mac(Buffer.concat([this.innerKeyBlock, body])).subarray(0, MAC_BYTES);
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

  /**
   * HMAC-SHA256 (RFC 2104) of the body that follows the inner key block in `keyedBody`:
   * H((K ⊕ opad) ‖ H((K ⊕ ipad) ‖ body)), as two one-shot hashes. `createHmac` makes a stream
   * object and an OpenSSL context per call, about twice the cost on a busy server's cold caches.
   */
  private mac(keyedBody: Uint8Array): Buffer {
    hash('sha256', keyedBody, 'buffer').copy(this.outer, BLOCK_BYTES);
    return hash('sha256', this.outer, 'buffer');
  }
}
