/**
 * Domain errors and their mapping to `google.rpc.Status`.
 *
 * Handlers and domain code throw these; the gRPC adapter turns each into a canonical status code,
 * a developer-facing message and `ErrorInfo` / `BadRequest` details in the `grpc-status-details-bin`
 * trailer. Clients turn a received status back into the same classes, so an error crosses a gRPC
 * hop without losing its code, reason or field violations. Anything that is not a `TandemError`
 * is a bug: it becomes `INTERNAL` with a generic message (the real one is logged, never sent).
 */
import { Metadata, status as GrpcCode, type ServiceError } from '@grpc/grpc-js';
import { Any } from '../../../gen/ts/google/protobuf/any';
import {
  BadRequest,
  BadRequest_FieldViolation,
  ErrorInfo,
  PreconditionFailure,
  PreconditionFailure_Violation,
  ResourceInfo,
  RetryInfo,
} from '../../../gen/ts/google/rpc/error_details';
import { Status } from '../../../gen/ts/google/rpc/status';

/** The `ErrorInfo.domain` of every error Tandem raises. */
export const ERROR_DOMAIN = 'tandem.dev';

/** The trailer that carries a serialized `google.rpc.Status`. */
export const STATUS_DETAILS_KEY = 'grpc-status-details-bin';

const TYPE_PREFIX = 'type.googleapis.com/';

/** One problem with one request field, as `google.rpc.BadRequest.FieldViolation`. */
export interface FieldViolation {
  /** Path to the field, for example `experiment.variants[1].weight`. */
  readonly field: string;
  /** What is wrong, for a developer. */
  readonly description: string;
  /** Optional machine-readable reason in UPPER_SNAKE_CASE, for example `REQUIRED`. */
  readonly reason?: string;
}

/** The resource an error is about, as `google.rpc.ResourceInfo`. */
export interface ResourceRef {
  readonly type: string;
  readonly name: string;
}

export interface TandemErrorOptions {
  /** `ErrorInfo.reason`, UPPER_SNAKE_CASE. Defaults to the code's name. */
  readonly reason?: string;
  /** `ErrorInfo.metadata`: small string facts a client may branch on. */
  readonly metadata?: Readonly<Record<string, string>>;
  readonly resource?: ResourceRef;
  readonly cause?: unknown;
}

/**
 * Base class of every error that is safe to report to a caller as it is. So its message never
 * quotes a dependency's own error (a driver's names hosts, ports and replica sets; a file
 * system's, paths): it says which dependency failed, and that error goes in `cause`.
 */
export abstract class TandemError extends Error {
  /** The canonical gRPC status code. */
  abstract readonly code: GrpcCode;
  readonly reason: string | undefined;
  readonly metadata: Readonly<Record<string, string>>;
  readonly resource: ResourceRef | undefined;

  constructor(message: string, options: TandemErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.reason = options.reason;
    this.metadata = options.metadata ?? {};
    this.resource = options.resource;
  }
}

/** Thrown when a request fails validation. Carries every field violation found, not the first. */
export class InvalidArgumentError extends TandemError {
  readonly code = GrpcCode.INVALID_ARGUMENT;
  readonly violations: readonly FieldViolation[];

  constructor(
    message: string,
    violations: readonly FieldViolation[] = [],
    options: TandemErrorOptions = {},
  ) {
    super(message, options);
    this.violations = violations;
  }
}

/**
 * Thrown when a named resource does not exist. When the request named it in a field (for example
 * the second of several feature references), `violations` say which, sent as `BadRequest`.
 */
export class NotFoundError extends TandemError {
  readonly code = GrpcCode.NOT_FOUND;
  readonly violations: readonly FieldViolation[];

  constructor(
    message: string,
    options: TandemErrorOptions & { violations?: readonly FieldViolation[] } = {},
  ) {
    super(message, options);
    this.violations = options.violations ?? [];
  }
}

/** Thrown when a create names a resource that already exists. */
export class AlreadyExistsError extends TandemError {
  readonly code = GrpcCode.ALREADY_EXISTS;
}

/** One unmet precondition, as `google.rpc.PreconditionFailure.Violation`. */
export interface PreconditionViolation {
  /** UPPER_SNAKE_CASE kind, for example `TYPE_CHANGE` or `EXPERIMENT_RUNNING`. */
  readonly type: string;
  /** What it is about, for example `feature_views/item_stats/features/ctr`. */
  readonly subject: string;
  readonly description: string;
}

/** Thrown when the system is not in the state an operation needs (e.g. starting a stopped experiment). */
export class FailedPreconditionError extends TandemError {
  readonly code = GrpcCode.FAILED_PRECONDITION;
  /** Every unmet precondition, sent as `google.rpc.PreconditionFailure`. */
  readonly violations: readonly PreconditionViolation[];

  constructor(
    message: string,
    options: TandemErrorOptions & { violations?: readonly PreconditionViolation[] } = {},
  ) {
    super(message, options);
    this.violations = options.violations ?? [];
  }
}

/** Thrown when a write lost an optimistic-concurrency race: a stale etag or a concurrent change. */
export class AbortedError extends TandemError {
  readonly code = GrpcCode.ABORTED;
}

/** Thrown when a dependency (storage, a peer service) cannot be reached; the caller may retry. */
export class UnavailableError extends TandemError {
  readonly code = GrpcCode.UNAVAILABLE;
  /** How long the caller should wait before retrying, in milliseconds. */
  readonly retryDelayMs: number | undefined;

  constructor(message: string, options: TandemErrorOptions & { retryDelayMs?: number } = {}) {
    super(message, options);
    this.retryDelayMs = options.retryDelayMs;
  }
}

/** Thrown when a request exceeds a documented limit (size, count, rate). */
export class ResourceExhaustedError extends TandemError {
  readonly code = GrpcCode.RESOURCE_EXHAUSTED;
}

/** Thrown when an admin RPC is called without credentials. */
export class UnauthenticatedError extends TandemError {
  readonly code = GrpcCode.UNAUTHENTICATED;
}

/** Thrown when the caller's credentials do not allow the operation. */
export class PermissionDeniedError extends TandemError {
  readonly code = GrpcCode.PERMISSION_DENIED;
}

/** Thrown when the caller's deadline passed before the work finished. */
export class DeadlineExceededError extends TandemError {
  readonly code = GrpcCode.DEADLINE_EXCEEDED;
}

/** Thrown when the caller gave up (cancelled the call). */
export class CancelledError extends TandemError {
  readonly code = GrpcCode.CANCELLED;
}

/** Thrown for an invariant broken inside Tandem. The message is not shown to callers. */
export class InternalError extends TandemError {
  readonly code = GrpcCode.INTERNAL;
}

/** Thrown by a client for a status from a peer that has no more specific class (e.g. UNIMPLEMENTED). */
export class RemoteError extends TandemError {
  readonly code: GrpcCode;

  constructor(code: GrpcCode, message: string, options: TandemErrorOptions = {}) {
    super(message, options);
    this.code = code;
  }
}

/**
 * Codes of a peer's answer that `toStatus` does not pass on to this service's caller (an
 * INTERNAL's message is the peer's own, which a caller does not see either).
 */
const NOT_PASSED_ON: ReadonlySet<GrpcCode> = new Set([
  GrpcCode.INTERNAL,
  GrpcCode.UNKNOWN,
  GrpcCode.UNIMPLEMENTED,
  GrpcCode.DATA_LOSS,
]);

/** The name of a canonical code, for example `INVALID_ARGUMENT`. */
export function codeName(code: GrpcCode): string {
  return GrpcCode[code];
}

/** The status a caller receives for `error`: code, message and trailer with details. */
export interface StatusObject {
  readonly code: GrpcCode;
  readonly details: string;
  readonly metadata: Metadata;
}

/**
 * Bounds of what a status carries. The message and the details travel in HTTP/2 trailers, which
 * clients cap (grpc-js and Node refuse a header block over 64 KiB and the call then hangs until
 * its deadline; C-core clients accept 8 KiB by default), and a message may quote the caller's
 * input (an unknown id of any length, hundreds of violations): each text is cut short by UTF-8
 * bytes and the violations listed stop at a byte budget, so that the trailers (the message twice,
 * once percent-encoded; the details in base64) stay within 8 KiB however large the request was,
 * in any script. What is left out is counted in the message and in ErrorInfo
 * (`omitted_violations`).
 */
const STATUS_LIMITS = {
  /** The message (sent again percent-encoded in `grpc-message`: up to three times as many). */
  messageBytes: 512,
  /** A violation's field path, type or subject; a resource's type and name; ErrorInfo metadata. */
  nameBytes: 256,
  /** A violation's description. */
  descriptionBytes: 512,
  /** The violations of one kind together, encoded: at least one always fits. */
  violationBytes: 1_536,
} as const;

/** `text`, cut to at most `maxBytes` UTF-8 bytes (whole code points) and marked `…` if cut. */
function clippedBytes(text: string, maxBytes: number): string {
  if (text.length <= maxBytes / 3 || Buffer.byteLength(text) <= maxBytes) return text;
  const room = maxBytes - 3; // '…' is three bytes
  let end = 0;
  let bytes = 0;
  for (const char of text) {
    const size = Buffer.byteLength(char);
    if (bytes + size > room) break;
    bytes += size;
    end += char.length;
  }
  return `${text.slice(0, end)}…`;
}

/**
 * The first of `items` whose encodings fit in `budget` bytes together (the first one whatever its
 * size), and how many did not.
 */
function withinBudget<T>(
  items: readonly T[],
  encodedBytes: (item: T) => number,
  budget: number,
): { kept: T[]; omitted: number } {
  const kept: T[] = [];
  let used = 0;
  for (const item of items) {
    // A repeated field's tag and length prefix beside the item itself.
    used += encodedBytes(item) + 4;
    if (used > budget && kept.length > 0) break;
    kept.push(item);
  }
  return { kept, omitted: items.length - kept.length };
}

/** `error` when a caller may be shown it as it is; undefined when it is this service's fault. */
function passedOn(error: unknown): TandemError | undefined {
  // A peer's UNKNOWN, UNIMPLEMENTED, DATA_LOSS or INTERNAL, let through by a handler, is this
  // service's internal error: its callers never get UNKNOWN, nor a method they called reported
  // missing, nor a peer's own message for its internal error.
  return error instanceof TandemError &&
    !(error instanceof RemoteError && NOT_PASSED_ON.has(error.code))
    ? error
    : undefined;
}

/**
 * The message a caller is shown for `error` (before `toStatus` bounds it): a `TandemError`'s, or
 * "internal error" for anything else, whose message (a bug's, or a dependency's error no adapter
 * mapped: LMDB's, the file system's) is for the logs only. Also for a status a response carries.
 */
export function callerMessage(error: unknown): string {
  const tandem = passedOn(error);
  return tandem && !(tandem instanceof InternalError) ? tandem.message : 'internal error';
}

/**
 * Maps any thrown value to the status the caller receives. A `TandemError` keeps its code, message
 * and details, within the bounds above; anything else becomes INTERNAL with a generic message
 * (`exposeInternal` is false).
 */
export function toStatus(error: unknown): StatusObject {
  const tandem = passedOn(error);
  const code = tandem?.code ?? GrpcCode.INTERNAL;
  const fieldViolations = withinBudget(
    (tandem instanceof InvalidArgumentError || tandem instanceof NotFoundError
      ? tandem.violations
      : []
    ).map((v) => ({
      field: clippedBytes(v.field, STATUS_LIMITS.nameBytes),
      description: clippedBytes(v.description, STATUS_LIMITS.descriptionBytes),
      reason: v.reason ?? '',
      localizedMessage: undefined,
    })),
    (v) => BadRequest_FieldViolation.encode(v).finish().length,
    STATUS_LIMITS.violationBytes,
  );
  const preconditionViolations = withinBudget(
    (tandem instanceof FailedPreconditionError ? tandem.violations : []).map((v) => ({
      type: clippedBytes(v.type, STATUS_LIMITS.nameBytes),
      subject: clippedBytes(v.subject, STATUS_LIMITS.nameBytes),
      description: clippedBytes(v.description, STATUS_LIMITS.descriptionBytes),
    })),
    (v) => PreconditionFailure_Violation.encode(v).finish().length,
    STATUS_LIMITS.violationBytes,
  );
  const omitted = fieldViolations.omitted + preconditionViolations.omitted;
  const fullMessage = callerMessage(error);
  // The count of what was left out is kept whole: the message is cut before it.
  const omission = omitted > 0 ? ` (${omitted} more violations not listed)` : '';
  const message =
    clippedBytes(fullMessage, STATUS_LIMITS.messageBytes - Buffer.byteLength(omission)) + omission;
  const errorMetadata: Record<string, string> = {};
  for (const [key, value] of Object.entries(tandem?.metadata ?? {})) {
    errorMetadata[clippedBytes(key, STATUS_LIMITS.nameBytes)] = clippedBytes(
      value,
      STATUS_LIMITS.nameBytes,
    );
  }
  if (omitted > 0) errorMetadata.omitted_violations = String(omitted);
  const details: Any[] = [
    packAny(
      'google.rpc.ErrorInfo',
      ErrorInfo.encode({
        reason: tandem?.reason ?? codeName(code),
        domain: ERROR_DOMAIN,
        metadata: errorMetadata,
      }).finish(),
    ),
  ];
  if (fieldViolations.kept.length > 0) {
    details.push(
      packAny(
        'google.rpc.BadRequest',
        BadRequest.encode({ fieldViolations: fieldViolations.kept }).finish(),
      ),
    );
  }
  if (preconditionViolations.kept.length > 0) {
    details.push(
      packAny(
        'google.rpc.PreconditionFailure',
        PreconditionFailure.encode({ violations: preconditionViolations.kept }).finish(),
      ),
    );
  }
  if (tandem?.resource) {
    details.push(
      packAny(
        'google.rpc.ResourceInfo',
        ResourceInfo.encode({
          resourceType: clippedBytes(tandem.resource.type, STATUS_LIMITS.nameBytes),
          resourceName: clippedBytes(tandem.resource.name, STATUS_LIMITS.nameBytes),
          owner: '',
          description: clippedBytes(message, STATUS_LIMITS.nameBytes),
        }).finish(),
      ),
    );
  }
  if (
    tandem instanceof UnavailableError &&
    tandem.retryDelayMs !== undefined &&
    Number.isFinite(tandem.retryDelayMs)
  ) {
    // Whole milliseconds, never negative: RetryInfo's nanos are an int32, and a fraction there
    // would make encoding throw inside grpc-js's call path.
    const ms = Math.max(0, Math.round(tandem.retryDelayMs));
    details.push(
      packAny(
        'google.rpc.RetryInfo',
        RetryInfo.encode({
          retryDelay: { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 },
        }).finish(),
      ),
    );
  }
  const metadata = new Metadata();
  metadata.set(STATUS_DETAILS_KEY, Buffer.from(Status.encode({ code, message, details }).finish()));
  return { code, details: message, metadata };
}

/** What a client learns from a failed call's status details. */
export interface DecodedStatus {
  readonly code: GrpcCode;
  readonly message: string;
  readonly errorInfo: ErrorInfo | undefined;
  readonly violations: FieldViolation[];
  readonly preconditionViolations: PreconditionViolation[];
  readonly resource: ResourceRef | undefined;
  readonly retryDelayMs: number | undefined;
}

/** Decodes `grpc-status-details-bin` from a failed call; falls back to the bare code and message. */
export function decodeStatus(
  error: Pick<ServiceError, 'code' | 'details' | 'metadata'>,
): DecodedStatus {
  const raw = error.metadata.get(STATUS_DETAILS_KEY)[0];
  const decoded: DecodedStatus = {
    code: error.code,
    message: error.details,
    errorInfo: undefined,
    violations: [],
    preconditionViolations: [],
    resource: undefined,
    retryDelayMs: undefined,
  };
  if (!(raw instanceof Buffer)) return decoded;
  let status: Status;
  try {
    status = Status.decode(raw);
  } catch {
    return decoded;
  }
  let errorInfo: ErrorInfo | undefined;
  const violations: FieldViolation[] = [];
  const preconditionViolations: PreconditionViolation[] = [];
  let resource: ResourceRef | undefined;
  let retryDelayMs: number | undefined;
  for (const any of status.details) {
    try {
      switch (any.typeUrl) {
        case `${TYPE_PREFIX}google.rpc.ErrorInfo`:
          errorInfo = ErrorInfo.decode(any.value);
          break;
        case `${TYPE_PREFIX}google.rpc.BadRequest`:
          for (const v of BadRequest.decode(any.value).fieldViolations) {
            violations.push({ field: v.field, description: v.description, reason: v.reason });
          }
          break;
        case `${TYPE_PREFIX}google.rpc.PreconditionFailure`:
          for (const v of PreconditionFailure.decode(any.value).violations) {
            preconditionViolations.push({
              type: v.type,
              subject: v.subject,
              description: v.description,
            });
          }
          break;
        case `${TYPE_PREFIX}google.rpc.ResourceInfo`: {
          const info = ResourceInfo.decode(any.value);
          resource = { type: info.resourceType, name: info.resourceName };
          break;
        }
        case `${TYPE_PREFIX}google.rpc.RetryInfo`: {
          const delay = RetryInfo.decode(any.value).retryDelay;
          if (delay) retryDelayMs = delay.seconds * 1000 + Math.round(delay.nanos / 1e6);
          break;
        }
        default:
          break;
      }
    } catch {
      // A detail that is not what its type URL says (truncated by a peer or a proxy) is left out:
      // the status keeps its code, its message and the details that decode.
    }
  }
  return {
    ...decoded,
    message: status.message || error.details,
    errorInfo,
    violations,
    preconditionViolations,
    resource,
    retryDelayMs,
  };
}

/**
 * Turns a failed outbound call into the matching `TandemError`, with the peer's reason, field
 * violations and resource, and the original error as `cause`.
 */
export function fromServiceError(error: ServiceError): TandemError {
  const s = decodeStatus(error);
  const options: TandemErrorOptions = {
    reason: s.errorInfo?.reason,
    metadata: s.errorInfo?.metadata ?? {},
    resource: s.resource,
    cause: error,
  };
  switch (s.code) {
    case GrpcCode.INVALID_ARGUMENT:
      return new InvalidArgumentError(s.message, s.violations, options);
    case GrpcCode.NOT_FOUND:
      return new NotFoundError(s.message, { ...options, violations: s.violations });
    case GrpcCode.ALREADY_EXISTS:
      return new AlreadyExistsError(s.message, options);
    case GrpcCode.FAILED_PRECONDITION:
      return new FailedPreconditionError(s.message, {
        ...options,
        violations: s.preconditionViolations,
      });
    case GrpcCode.ABORTED:
      return new AbortedError(s.message, options);
    case GrpcCode.UNAVAILABLE:
      return new UnavailableError(s.message, { ...options, retryDelayMs: s.retryDelayMs });
    case GrpcCode.RESOURCE_EXHAUSTED:
      return new ResourceExhaustedError(s.message, options);
    case GrpcCode.UNAUTHENTICATED:
      return new UnauthenticatedError(s.message, options);
    case GrpcCode.PERMISSION_DENIED:
      return new PermissionDeniedError(s.message, options);
    case GrpcCode.DEADLINE_EXCEEDED:
      return new DeadlineExceededError(s.message, options);
    case GrpcCode.CANCELLED:
      return new CancelledError(s.message, options);
    default:
      return new RemoteError(s.code, s.message, options);
  }
}

function packAny(typeName: string, value: Uint8Array): Any {
  return { typeUrl: `${TYPE_PREFIX}${typeName}`, value: Buffer.from(value) };
}

/** Causes `causeChain` follows beyond the error itself: enough for a wrapped driver error. */
const MAX_CAUSES = 3;

/**
 * `error` and its causes that are errors, outermost first, each once, at most `MAX_CAUSES` beyond
 * it: what a caller's message leaves out (see `TandemError`) and spans and logs show.
 */
export function causeChain(error: unknown): Error[] {
  const chain: Error[] = [];
  let current: unknown = error;
  while (current instanceof Error && !chain.includes(current) && chain.length <= MAX_CAUSES) {
    chain.push(current);
    current = current.cause;
  }
  return chain;
}
