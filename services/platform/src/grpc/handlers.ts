/**
 * The handler adapter: services write plain `async (request, ctx) => response` functions and
 * `implement()` turns them into a grpc-js service implementation.
 *
 * It exists because grpc-js only catches *synchronous* throws (reporting them as UNKNOWN with the
 * raw message) and ignores a rejected promise, leaving the call hanging. Here every handler is
 * awaited, every failure is mapped to a status exactly once (`toStatus`), admin methods check the
 * bearer token, and the call runs inside a SERVER span continuing the caller's trace — when there
 * is a trace: with no tracer provider registered and no trace context from the caller, no span or
 * context is made, since nothing would record or propagate it (on a busy server that work was a
 * fifth of a bare echo call's CPU). Outbound calls inherit the caller's deadline and cancellation
 * when made with `{ parent: ctx }` (see `CallSettings.parent`).
 */
import type { EventEmitter } from 'node:events';
import {
  status as GrpcCode,
  type Metadata,
  type ServerUnaryCall,
  type ServerReadableStream,
  type ServerWritableStream,
  type UntypedServiceImplementation,
  type sendUnaryData,
} from '@grpc/grpc-js';
import { context, SpanKind, trace } from '@opentelemetry/api';
import { rateLimitedWarning, type Logger } from '../logging';
import {
  CancelledError,
  DeadlineExceededError,
  InvalidArgumentError,
  ResourceExhaustedError,
  toStatus,
  TandemError,
  type FieldViolation,
  UnavailableError,
} from '../errors';
import { carriesTraceContext, extractFromMetadata } from '../telemetry/propagation';
import { rpcDurationRecorder } from '../telemetry/rpc-metrics';
import { endRpcSpan, rpcSpanStarter, tracingRecords } from '../telemetry/rpc-spans';
import type { AdminAuth } from './auth';
import { HandlerPacer } from './handler-pacing';
import { requestMessage } from './descriptor-set';
import { requestCheck, type WireCheck } from './wire-check';
import {
  mayHoldReservedMapKey,
  reservedMapKeys,
  tooDeepFields,
  undecodableFields,
  warmContractRegistry,
} from './undecodable-fields';

/** A method as ts-proto describes it in `XServiceService`. */
export interface MethodDefinition<Req, Res> {
  readonly path: string;
  readonly requestStream: boolean;
  readonly responseStream: boolean;
  readonly requestSerialize: (value: Req) => Buffer;
  readonly requestDeserialize: (value: Buffer) => Req;
  readonly responseSerialize: (value: Res) => Buffer;
  readonly responseDeserialize: (value: Buffer) => Res;
}

/** Any method definition, whatever its message types. */
export interface AnyMethodDefinition {
  readonly path: string;
  readonly requestStream: boolean;
  readonly responseStream: boolean;
  readonly requestSerialize: (value: never) => Buffer;
  readonly requestDeserialize: (value: Buffer) => unknown;
  readonly responseSerialize: (value: never) => Buffer;
  readonly responseDeserialize: (value: Buffer) => unknown;
}

/** A service as ts-proto describes it: method name → definition. */
export type ServiceDefinition = Readonly<Record<string, AnyMethodDefinition>>;

export type RequestOf<M> = M extends { requestDeserialize: (value: Buffer) => infer Req }
  ? Req
  : never;
export type ResponseOf<M> = M extends { responseDeserialize: (value: Buffer) => infer Res }
  ? Res
  : never;

/** What a handler knows about the call besides the request. */
export interface CallContext {
  /** `/package.Service/Method`. */
  readonly method: string;
  /** The caller's deadline, when it set one. */
  readonly deadline: Date | undefined;
  /** Request metadata (headers). */
  readonly metadata: Metadata;
  /** Aborted when the caller cancels or the deadline passes. */
  readonly signal: AbortSignal;
  /** A logger whose lines carry the method and the trace id. */
  readonly logger: Logger;
  /** The caller's address. */
  readonly peer: string;
}

/** The plain function a service writes for each method, chosen by the method's streaming shape. */
export type Handler<M> = M extends { requestStream: false; responseStream: false }
  ? (request: RequestOf<M>, ctx: CallContext) => Promise<ResponseOf<M>>
  : M extends { requestStream: true; responseStream: false }
    ? (requests: AsyncIterable<RequestOf<M>>, ctx: CallContext) => Promise<ResponseOf<M>>
    : M extends { requestStream: false; responseStream: true }
      ? (request: RequestOf<M>, ctx: CallContext) => AsyncIterable<ResponseOf<M>>
      : (requests: AsyncIterable<RequestOf<M>>, ctx: CallContext) => AsyncIterable<ResponseOf<M>>;

/** One handler per method of the service: leaving one out is a compile error, not UNIMPLEMENTED. */
export type Handlers<D> = { readonly [K in keyof D]: Handler<D[K]> };

export interface ImplementOptions<D> {
  readonly logger: Logger;
  /** Methods that require the admin bearer token. */
  readonly adminMethods?: readonly (keyof D & string)[];
  /** The admin token check; admin methods are open when absent. */
  readonly auth?: AdminAuth;
  /**
   * The server's `grpc.max_send_message_length` (`TANDEM_GRPC_MAX_MESSAGE_BYTES`): a larger
   * response answers RESOURCE_EXHAUSTED, recorded as such. No limit when absent, as grpc-js's.
   */
  readonly maxResponseBytes?: number;
}

/** Any server-side call shape; all carry metadata, a deadline, a peer and a `cancelled` event. */
export type InboundCall =
  | ServerUnaryCall<unknown, unknown>
  | ServerReadableStream<unknown, unknown>
  | ServerWritableStream<unknown, unknown>;

/** Builds the grpc-js implementation of `definition` from plain handlers. */
export function implement<D extends ServiceDefinition>(
  definition: D,
  handlers: Handlers<D>,
  options: ImplementOptions<D>,
): UntypedServiceImplementation {
  const implementation: UntypedServiceImplementation = {};
  const admin = new Set<string>(options.adminMethods ?? []);
  for (const name of Object.keys(definition)) {
    const method = definition[name];
    const handler = handlers[name] as unknown;
    if (!method || typeof handler !== 'function') {
      throw new Error(`no handler for ${method?.path ?? name}`);
    }
    const run = wrapCall(method.path, admin.has(name) ? options.auth : undefined, options.logger);
    const fn = handler as (input: unknown, ctx: CallContext) => unknown;
    // A single response is serialized here, before the call's status is recorded, so that one
    // that cannot be sent is recorded (and logged) as what the caller gets.
    const respond = serializing(method, options.maxResponseBytes ?? Infinity);
    if (!method.requestStream && !method.responseStream) {
      implementation[name] = (
        call: ServerUnaryCall<unknown, unknown>,
        callback: sendUnaryData<unknown>,
      ) => {
        run(call, (ctx) => fn(decoded(call.request), ctx) as Promise<unknown>, callback, respond);
      };
    } else if (method.requestStream && !method.responseStream) {
      implementation[name] = (
        call: ServerReadableStream<unknown, unknown>,
        callback: sendUnaryData<unknown>,
      ) => {
        run(call, (ctx) => fn(decodedStream(call), ctx) as Promise<unknown>, callback, respond);
      };
    } else {
      implementation[name] = (call: ServerWritableStream<unknown, unknown>) => {
        run(
          call,
          async (ctx) => {
            const input = method.requestStream
              ? decodedStream(call as unknown as AsyncIterable<unknown>)
              : decoded(call.request);
            for await (const response of fn(input, ctx) as AsyncIterable<unknown>) {
              if (!call.write(response))
                await new Promise((resolve) => call.once('drain', resolve));
            }
            return undefined;
          },
          (error, _value, trailer) => {
            if (error) {
              call.emit('error', error);
            } else {
              call.end(trailer);
            }
          },
        );
      };
    }
  }
  return implementation;
}

/** The reason of a response over the server's limit. */
const TOO_LARGE = 'RESPONSE_TOO_LARGE';

/**
 * The error for a response over the `maxBytes` a server sends (its size when known), for the
 * kit's check and for a serializer that refuses before building the bytes (see
 * {@link ResponseSerializer}).
 */
export function responseTooLarge(maxBytes: number, bytes?: number): ResourceExhaustedError {
  return new ResourceExhaustedError(
    bytes === undefined
      ? `the response would be larger than the ${maxBytes} bytes this server sends`
      : `the response is ${bytes} bytes, more than the ${maxBytes} this server sends`,
    { reason: TOO_LARGE },
  );
}

/**
 * A method's response serializer as the kit calls it: with the server's limit, so that one whose
 * responses can be large may throw {@link responseTooLarge} before allocating them (grpc-js calls
 * it with the response alone).
 */
export type ResponseSerializer = (response: unknown, maxBytes: number) => Buffer;

/**
 * The response's bytes, or the error the caller is answered with instead: RESOURCE_EXHAUSTED for
 * one over `maxBytes` (which grpc-js would refuse after the call had been recorded as answered),
 * the serializer's own `TandemError`, and INTERNAL for a response it cannot serialize (a handler's
 * fault: a fraction where the message holds an integer). The bytes reach grpc-js through
 * {@link passingSerializedResponses}.
 */
function serializing(
  method: AnyMethodDefinition,
  maxBytes: number,
): (response: unknown) => Buffer | Error {
  const serialize = method.responseSerialize as unknown as ResponseSerializer;
  return (response) => {
    let bytes: Buffer;
    try {
      bytes = serialize(response, maxBytes);
    } catch (error) {
      if (error instanceof TandemError) return error;
      return new Error(`the response of ${method.path} could not be serialized`, { cause: error });
    }
    return bytes.length <= maxBytes ? bytes : responseTooLarge(maxBytes, bytes.length);
  };
}

/**
 * `definition` with response serializers that pass on the bytes {@link implement}'s handlers have
 * already serialized, for `GrpcServer.add`; what is not yet bytes (a streamed response) is
 * serialized as before.
 */
export function passingSerializedResponses<
  D extends Readonly<Record<string, { readonly responseSerialize: (value: never) => Buffer }>>,
>(definition: D): D {
  const passing: Record<string, unknown> = {};
  for (const [name, method] of Object.entries(definition)) {
    const serialize = method.responseSerialize as (value: unknown) => Buffer;
    passing[name] = {
      ...method,
      responseSerialize: (value: unknown): Buffer =>
        Buffer.isBuffer(value) ? value : serialize(value),
    };
  }
  return passing as D;
}

/** What a request decoder wrapped by {@link decodingRequestsSafely} returns instead of throwing. */
class UndecodableRequest {
  constructor(
    readonly cause: unknown,
    readonly methodPath: string,
    readonly bytes: Buffer,
  ) {}
}

/** What such a decoder returns for a request it refuses without decoding it. */
class RefusedRequest {
  constructor(readonly error: InvalidArgumentError | ResourceExhaustedError) {}
}

/**
 * The most bytes a request of a method may take, below the server's message limit, by method
 * name. Decoding is paid before any handler check, and a request of a method whose valid requests
 * are small (Resolve: ~200 KiB at most) may otherwise cost a second of the event loop to decode
 * 16 MiB of nested attributes, from any caller.
 */
export type RequestByteLimits<D> = Partial<Readonly<Record<keyof D & string, number>>>;

/**
 * `definition` with request decoders that return {@link UndecodableRequest} instead of throwing,
 * for `GrpcServer.add`. grpc-js answers a decoder's throw with INTERNAL, but the cause is the
 * caller's message: bytes that are not the message, or valid protobuf this server cannot hold
 * (an int64 beyond ±2^53, as the code is generated with `forceLong=number`; nesting deeper than
 * the decoder's recursion limit). The handlers of {@link implement} answer it with
 * INVALID_ARGUMENT. So they do a request with a map key the decoder would lose (`__proto__`; see
 * `reservedMapKeys`), found by a byte search before decoding, and one the check before decoding
 * refuses (see `requestCheck`: bytes not well-formed, which the decoder would read in part, a
 * Timestamp whose nanos it would add to its seconds, a string that is not UTF-8, a Value without a
 * kind).
 */
export function decodingRequestsSafely<
  D extends Readonly<
    Record<
      string,
      { readonly path: string; readonly requestDeserialize: (value: Buffer) => unknown }
    >
  >,
>(definition: D, limits: RequestByteLimits<D> = {}): D {
  // Loaded now (~0.1 s, once per process), not by the first request that needs it.
  warmContractRegistry();
  const safe: Record<string, unknown> = {};
  for (const [name, method] of Object.entries(definition)) {
    const decode = method.requestDeserialize;
    const check = requestCheckOf(method.path);
    const limit = (limits as Record<string, number | undefined>)[name];
    safe[name] = {
      ...method,
      requestDeserialize: (bytes: Buffer): unknown => {
        if (limit !== undefined && bytes.length > limit) {
          return new RefusedRequest(
            new ResourceExhaustedError(
              `the request takes ${bytes.length} bytes, more than the ${limit} ${method.path} takes`,
              { reason: 'REQUEST_TOO_LARGE', metadata: { limit_bytes: String(limit) } },
            ),
          );
        }
        const refused = refusal(method.path, bytes, check);
        if (refused !== undefined) return new RefusedRequest(refused);
        try {
          return decode(bytes);
        } catch (error) {
          return new UndecodableRequest(error, method.path, bytes);
        }
      },
    };
  }
  return safe as D;
}

/** INVALID_ARGUMENT with `violations`, listed after `message` when there are any. */
function invalid(message: string, violations: FieldViolation[], reason: string) {
  const listed = violations.length > 0 ? `: ${violations.map((v) => v.field).join(', ')}` : '';
  return new InvalidArgumentError(`${message}${listed}`, violations, { reason });
}

/**
 * Why `bytes`, a request of `methodPath`, is refused before decoding, if it is: a map key the
 * generated decoder would lose (`__proto__`, found by a byte search first); bytes that are not
 * well-formed protobuf, which it would read in part (it stops at a field number 0 or a stray
 * end-group tag, dropping the fields after it); a Timestamp whose nanos it would add to the
 * seconds, a string that is not UTF-8, which it would turn into U+FFFD, or a
 * `google.protobuf.Value` without a kind, whose Struct entry it would drop (see `requestCheck`).
 */
function refusal(
  methodPath: string,
  bytes: Buffer,
  check: WireCheck | undefined,
): InvalidArgumentError | undefined {
  if (mayHoldReservedMapKey(bytes)) {
    const reserved = reservedMapKeys(methodPath, bytes);
    // Not checkable, so not decoded: the generated decoder would drop such a key.
    if (reserved === undefined) {
      return invalid(
        'the request holds "__proto__" and is not a message this server can check',
        [],
        'UNDECODABLE_REQUEST',
      );
    }
    if (reserved.length > 0) {
      return invalid('the request has map keys this server cannot hold', reserved, 'RESERVED_KEY');
    }
  }
  if (check === undefined) return undefined;
  const violations = check(bytes);
  if (violations === undefined) {
    return invalid(
      'the request is not a message this server can decode: not well-formed protobuf (a field number 0, an unmatched group tag, a length past its message)',
      [],
      'UNDECODABLE_REQUEST',
    );
  }
  if (violations.length === 0) return undefined;
  const reasons = [...new Set(violations.map((v) => v.reason ?? ''))];
  const what = reasons.map((reason) => REFUSED_BEFORE_DECODING[reason] ?? reason).join(' and ');
  return invalid(
    `the request has ${what}`,
    violations,
    reasons.length === 1 ? (reasons[0] as string) : 'INVALID_ENCODING',
  );
}

/** What the check before decoding found, by violation reason, for the status message. */
const REFUSED_BEFORE_DECODING: Readonly<Record<string, string>> = {
  INVALID_TIMESTAMP: 'Timestamps with nanos out of range',
  INVALID_UTF8: 'strings that are not UTF-8',
  NO_VALUE: 'google.protobuf.Values without a kind',
};

/** The check of a method's requests before decoding (none without a descriptor set). */
function requestCheckOf(methodPath: string): WireCheck | undefined {
  try {
    const schema = requestMessage(methodPath);
    return schema === undefined ? undefined : requestCheck(schema);
  } catch {
    return undefined;
  }
}

/** The request, or INVALID_ARGUMENT when its decoder failed. */
function decoded(request: unknown): unknown {
  if (request instanceof UndecodableRequest) throw undecodable(request);
  if (request instanceof RefusedRequest) throw request.error;
  return request;
}

/** The request stream, ending with INVALID_ARGUMENT at a message its decoder failed on. */
async function* decodedStream(requests: AsyncIterable<unknown>): AsyncIterable<unknown> {
  for await (const request of requests) yield decoded(request);
}

function undecodable(request: UndecodableRequest): InvalidArgumentError {
  const why = request.cause instanceof Error ? request.cause.message : String(request.cause);
  const violations = undecodableFields(request.methodPath, request.bytes);
  if (violations.length === 0 && /recursion limit/.test(why)) {
    const tooDeep = tooDeepFields(request.methodPath, request.bytes);
    if (tooDeep.length > 0) {
      return new InvalidArgumentError(
        `the request is nested too deep to decode: ${tooDeep.map((v) => v.field).join(', ')}`,
        tooDeep,
        { reason: 'UNDECODABLE_REQUEST' },
      );
    }
  }
  return new InvalidArgumentError(
    violations.length > 0
      ? `the request holds integers this server cannot hold exactly: ${violations.map((v) => v.field).join(', ')}`
      : `the request is not a message this server can decode: ${why}`,
    violations,
    { reason: 'UNDECODABLE_REQUEST' },
  );
}

type Finish = (
  error: ReturnType<typeof toStatus> | null,
  value?: unknown,
  trailer?: Metadata,
) => void;

/** A call's context; its signal and peer are made only when read (most handlers never do). */
class ServerCallContext implements CallContext {
  private controller: AbortController | undefined;
  /** When grpc-js reported the call cancelled (by the caller, or its deadline). */
  private cancelledAt: number | undefined;

  constructor(
    readonly method: string,
    readonly deadline: Date | undefined,
    readonly metadata: Metadata,
    readonly logger: Logger,
    private readonly call: InboundCall,
  ) {}

  get peer(): string {
    return this.call.getPeer();
  }

  get signal(): AbortSignal {
    if (this.controller === undefined) {
      this.controller = new AbortController();
      if (this.cancelledAt !== undefined) this.controller.abort(cancelledError());
    }
    return this.controller.signal;
  }

  /** Whether grpc-js has answered the call as cancelled (a method: read again after awaits). */
  isCancelled(): boolean {
    return this.cancelledAt !== undefined;
  }

  cancel(): void {
    this.cancelledAt = Date.now();
    this.controller?.abort(cancelledError());
  }

  /**
   * What the caller got for a handler that settled with `code`: grpc-js answers a call cancelled
   * or past its deadline itself, whatever the handler returns after, so spans and metrics record
   * that rather than the handler's late result.
   */
  answered(code: GrpcCode): GrpcCode {
    if (this.cancelledAt === undefined) return code;
    const deadline = this.deadline?.getTime();
    return deadline !== undefined && this.cancelledAt >= deadline - DEADLINE_TOLERANCE_MS
      ? GrpcCode.DEADLINE_EXCEEDED
      : GrpcCode.CANCELLED;
  }
}

function cancelledError(): CancelledError {
  return new CancelledError('the caller cancelled the call');
}

/**
 * How early before its deadline (as this server computed it) a cancellation still counts as the
 * deadline's. A caller's deadline passing reaches the server as a plain cancellation, and the
 * server's copy of the deadline runs late by however long the call's headers waited to be read
 * (a busy event loop: tens of milliseconds under load), besides grpc-js's timer and this clock
 * rounding differently. A caller that cancels on purpose this close to its deadline is counted
 * as having run out of time.
 */
const DEADLINE_TOLERANCE_MS = 50;

/** How often a method logs the dependency failure behind its UNAVAILABLE answers, at most. */
const UNAVAILABLE_LOG_INTERVAL_MS = 10_000;

/** One per process: the handlers of every service share its event loop. */
const pacer = new HandlerPacer();

/**
 * Sets how long the handlers of calls that arrive together run before later calls wait for the
 * next turn of the loop, for every server of this process (see `HandlerPacer`); 0 turns pacing
 * off. `bootstrap` sets it from `TANDEM_GRPC_HANDLER_SLICE_US`.
 */
export function setHandlerSlice(sliceMs: number): void {
  pacer.setSlice(sliceMs);
}

/** The part every call shape shares: pacing, auth, span, context, error mapping. */
function wrapCall(path: string, auth: AdminAuth | undefined, rootLogger: Logger) {
  // One child logger per method, not per call: trace ids are added by the mixin at log time.
  const methodLogger = rootLogger.child({ rpc: path });
  // A caller is told which dependency failed; what the dependency said (the host it could not
  // reach, why) is logged here, with every call's span recording it too.
  const dependencyFailed = rateLimitedWarning(
    methodLogger,
    'answered UNAVAILABLE: a dependency failed',
    UNAVAILABLE_LOG_INTERVAL_MS,
  );
  const startSpan = rpcSpanStarter(path, SpanKind.SERVER);
  const recordDuration = rpcDurationRecorder(path);
  return (
    call: InboundCall,
    body: (ctx: CallContext) => Promise<unknown>,
    finish: Finish,
    respond?: (response: unknown) => Buffer | Error,
  ): void => {
    const started = performance.now();
    const rawDeadline = call.getDeadline();
    const deadline =
      rawDeadline instanceof Date
        ? rawDeadline
        : Number.isFinite(rawDeadline)
          ? new Date(rawDeadline)
          : undefined;
    const ctx = new ServerCallContext(path, deadline, call.metadata, methodLogger, call);
    const onCancelled = (): void => {
      ctx.cancel();
    };
    // grpc-js emits 'cancelled' when the stream closes, also after a completed call; the listener
    // is removed once the handler settles, so a finished call does not build an error for nobody.
    (call as EventEmitter).once('cancelled', onCancelled);
    // What the caller sent (trace context, baggage) is the context the handler runs in.
    const sent =
      tracingRecords() || carriesTraceContext(call.metadata)
        ? extractFromMetadata(call.metadata)
        : undefined;
    const span = sent === undefined ? undefined : startSpan(sent);
    const execute = async (): Promise<unknown> => {
      // Cancelled while it waited for its turn (see `HandlerPacer`): grpc-js has answered it.
      if (ctx.isCancelled()) throw cancelledError();
      // Its deadline passed while it waited (behind a handler that held the loop, which also
      // held grpc-js's deadline timer): nobody waits for its result, so it does not run.
      if (deadline !== undefined && deadline.getTime() <= Date.now()) {
        throw new DeadlineExceededError('the deadline passed before the call started');
      }
      auth?.check(call.metadata);
      const response = await body(ctx);
      // Cancelled or past its deadline meanwhile: grpc-js has answered, and would not send it.
      if (respond === undefined || ctx.isCancelled()) return response;
      const bytes = respond(response);
      if (bytes instanceof Error) throw bytes;
      return bytes;
    };
    const run = (): void => {
      execute().then(
        (value) => {
          (call as EventEmitter).removeListener('cancelled', onCancelled);
          const code = ctx.answered(GrpcCode.OK);
          if (span !== undefined) endRpcSpan(span, SpanKind.SERVER, code);
          recordDuration(started, code);
          finish(null, value);
        },
        (error: unknown) => {
          (call as EventEmitter).removeListener('cancelled', onCancelled);
          const status = toStatus(error);
          if (!(error instanceof TandemError) || status.code === GrpcCode.INTERNAL) {
            rootLogger.error({ err: error, rpc: path }, 'unexpected error in handler');
          } else if (error instanceof ResourceExhaustedError && error.reason === TOO_LARGE) {
            // The server's fault, not the caller's: a method whose answers can grow pages them.
            rootLogger.error({ err: error, rpc: path }, 'response larger than this server sends');
          } else if (error instanceof UnavailableError && error.cause !== undefined) {
            dependencyFailed(error);
          }
          const code = ctx.answered(status.code);
          if (span !== undefined) endRpcSpan(span, SpanKind.SERVER, code, error);
          recordDuration(started, code);
          finish(status);
        },
      );
    };
    pacer.start(
      sent === undefined || span === undefined
        ? run
        : () => {
            context.with(trace.setSpan(sent, span), run);
          },
    );
  };
}
