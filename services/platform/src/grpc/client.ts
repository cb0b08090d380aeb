/**
 * Typed clients: one per dependency, built from the ts-proto service definition.
 *
 * Each unary method becomes `(request, options?) => Promise<response>`, client-streaming methods
 * take an iterable of requests, server-streaming ones return an async iterable. Every call:
 * - gets a deadline: its own timeout, and when made on behalf of an inbound call (`parent`), no
 *   later than that call's deadline, so a caller's budget is never exceeded downstream; it is
 *   cancelled when the inbound call is;
 * - runs in a CLIENT span whose context travels in `traceparent`, when there is a trace to
 *   continue or a tracer provider to record one;
 * - fails with the `TandemError` matching the peer's status, details decoded.
 */
import {
  Client,
  Metadata,
  type CallOptions,
  type ChannelCredentials,
  type ChannelOptions,
  type ClientReadableStream,
  type Interceptor,
  InterceptingCall,
  type ServiceError,
} from '@grpc/grpc-js';
import { context, SpanKind, trace, type Attributes } from '@opentelemetry/api';
import { fromServiceError } from '../errors';
import { injectIntoMetadata } from '../telemetry/propagation';
import { endRpcSpan, startRpcSpan, tracingRecords } from '../telemetry/rpc-spans';
import type { CallContext, RequestOf, ResponseOf, ServiceDefinition } from './handlers';

export interface CallSettings {
  /** This call's own timeout. @default the client's `defaultTimeoutMs` */
  readonly timeoutMs?: number;
  /**
   * The inbound call this one is made for (a handler's `ctx`): the call ends no later than its
   * deadline and is cancelled when it is.
   */
  readonly parent?: CallContext;
  /** Extra request metadata (for example `authorization`). */
  readonly metadata?: Metadata;
  /** Cancels the call when aborted. */
  readonly signal?: AbortSignal;
}

type ClientMethod<M> = M extends { requestStream: false; responseStream: false }
  ? (request: RequestOf<M>, settings?: CallSettings) => Promise<ResponseOf<M>>
  : M extends { requestStream: true; responseStream: false }
    ? (
        requests: Iterable<RequestOf<M>> | AsyncIterable<RequestOf<M>>,
        settings?: CallSettings,
      ) => Promise<ResponseOf<M>>
    : M extends { requestStream: false; responseStream: true }
      ? (request: RequestOf<M>, settings?: CallSettings) => AsyncIterable<ResponseOf<M>>
      : never;

/** The promise-based client of service `D`. */
export type TypedClient<D> = { readonly [K in keyof D]: ClientMethod<D[K]> } & {
  /** Closes the channel. */
  close(): void;
  /** Resolves once the channel is connected, or rejects after `timeoutMs`. */
  waitForReady(timeoutMs: number): Promise<void>;
};

export interface ClientOptions {
  /** `host:port`. */
  readonly address: string;
  readonly credentials: ChannelCredentials;
  /** Timeout of a call that does not set one. @default 5000 */
  readonly defaultTimeoutMs?: number;
  /** Sent with every call (for example the admin token). */
  readonly metadata?: Metadata;
  readonly channelOptions?: ChannelOptions;
}

/**
 * `server.address` and `server.port` of a client's target (`host:port`, `[v6]:port`, with an
 * optional `dns:` scheme; a `unix:` path has no port), as OpenTelemetry's RPC conventions require
 * on CLIENT spans.
 */
export function serverAttributes(target: string): Attributes {
  if (target.startsWith('unix:')) return { 'server.address': target.slice('unix:'.length) };
  const address = target.replace(/^dns:(\/\/[^/]*\/)?/, '');
  const match = /^\[([^\]]+)\](?::(\d+))?$/.exec(address) ?? /^([^:]*)(?::(\d+))?$/.exec(address);
  if (match === null) return { 'server.address': address };
  const [, host = '', port] = match;
  return port === undefined
    ? { 'server.address': host }
    : { 'server.address': host, 'server.port': Number(port) };
}

/**
 * Starts a CLIENT span per call and sends its context in the metadata; a call with no trace to
 * continue and no provider to record one goes through untouched.
 */
function tracingInterceptor(target: string): Interceptor {
  const server = Object.freeze(serverAttributes(target));
  return (options, nextCall) => {
    if (!tracingRecords() && !trace.getSpanContext(context.active())) {
      return new InterceptingCall(nextCall(options));
    }
    const path = options.method_definition.path;
    const span = startRpcSpan(path, SpanKind.CLIENT, context.active());
    span.setAttributes(server);
    return new InterceptingCall(nextCall(options), {
      start(metadata, _listener, next) {
        injectIntoMetadata(metadata, trace.setSpan(context.active(), span));
        next(metadata, {
          onReceiveStatus(status, nextStatus) {
            endRpcSpan(span, SpanKind.CLIENT, status.code);
            nextStatus(status);
          },
        });
      },
    });
  };
}

/**
 * The longest timeout sent: grpc-js servers read a `grpc-timeout` into a 32-bit integer of
 * milliseconds, so one of 24.8 days or more wraps and fails the call at once. A second below it,
 * since such a timeout goes out in whole seconds, rounded up.
 */
const MAX_TIMEOUT_MS = 2 ** 31 - 1 - 1000;

/** The deadline of a call: its own timeout, capped by the inbound call's deadline. */
function deadlineFor(timeoutMs: number, parent: CallContext | undefined): Date {
  const own = Date.now() + Math.min(timeoutMs, MAX_TIMEOUT_MS);
  return new Date(Math.min(own, parent?.deadline?.getTime() ?? Infinity));
}

/**
 * Cancels `call` when `settings` has a signal or a parent call that aborts; stops listening once
 * the call has its status (a long-lived signal would otherwise keep a listener per call).
 */
function cancelWith(
  call: { cancel(): void; once(event: 'status', listener: () => void): unknown },
  settings: CallSettings | undefined,
): void {
  for (const signal of [settings?.signal, settings?.parent?.signal]) {
    if (signal === undefined) continue;
    if (signal.aborted) {
      call.cancel();
      continue;
    }
    const cancel = (): void => {
      call.cancel();
    };
    signal.addEventListener('abort', cancel, { once: true });
    call.once('status', () => {
      signal.removeEventListener('abort', cancel);
    });
  }
}

function asError(error: ServiceError): Error {
  return fromServiceError(error);
}

/** Creates the typed client of `definition` at `options.address`. */
export function createClient<D extends ServiceDefinition>(
  definition: D,
  options: ClientOptions,
): TypedClient<D> {
  const client = new Client(options.address, options.credentials, {
    ...options.channelOptions,
    interceptors: [tracingInterceptor(options.address)],
  });
  const defaultTimeoutMs = options.defaultTimeoutMs ?? 5000;

  const prepare = (
    settings: CallSettings | undefined,
  ): { metadata: Metadata; callOptions: CallOptions } => {
    const metadata = options.metadata?.clone() ?? new Metadata();
    if (settings?.metadata) metadata.merge(settings.metadata);
    return {
      metadata,
      callOptions: {
        deadline: deadlineFor(settings?.timeoutMs ?? defaultTimeoutMs, settings?.parent),
      },
    };
  };

  const typed: Record<string, unknown> = {
    close: () => {
      client.close();
    },
    waitForReady: (timeoutMs: number) =>
      new Promise<void>((resolve, reject) => {
        client.waitForReady(Date.now() + timeoutMs, (error) => {
          if (error) reject(error);
          else resolve();
        });
      }),
  };

  for (const [name, method] of Object.entries(definition)) {
    const serialize = method.requestSerialize as (value: unknown) => Buffer;
    const deserialize = method.responseDeserialize;
    if (!method.requestStream && !method.responseStream) {
      typed[name] = (request: unknown, settings?: CallSettings) =>
        new Promise((resolve, reject) => {
          const { metadata, callOptions } = prepare(settings);
          const call = client.makeUnaryRequest(
            method.path,
            serialize,
            deserialize,
            request,
            metadata,
            callOptions,
            (error, value) => {
              if (error) reject(asError(error));
              else resolve(value);
            },
          );
          cancelWith(call, settings);
        });
    } else if (method.requestStream && !method.responseStream) {
      typed[name] = (
        requests: Iterable<unknown> | AsyncIterable<unknown>,
        settings?: CallSettings,
      ) =>
        new Promise((resolve, reject) => {
          const { metadata, callOptions } = prepare(settings);
          const call = client.makeClientStreamRequest(
            method.path,
            serialize,
            deserialize,
            metadata,
            callOptions,
            (error, value) => {
              if (error) reject(asError(error));
              else resolve(value);
            },
          );
          cancelWith(call, settings);
          void (async () => {
            try {
              for await (const request of requests) {
                if (!call.write(request)) await new Promise((r) => call.once('drain', r));
              }
              call.end();
            } catch (error) {
              // The request iterable failed: abandon the call and report that failure, not CANCELLED.
              reject(error instanceof Error ? error : new Error(String(error)));
              call.cancel();
            }
          })();
        });
    } else if (!method.requestStream && method.responseStream) {
      typed[name] = (request: unknown, settings?: CallSettings) => {
        const { metadata, callOptions } = prepare(settings);
        const call: ClientReadableStream<unknown> = client.makeServerStreamRequest(
          method.path,
          serialize,
          deserialize,
          request,
          metadata,
          callOptions,
        );
        cancelWith(call, settings);
        return (async function* stream() {
          try {
            for await (const item of call) yield item;
          } catch (error) {
            throw asError(error as ServiceError);
          }
        })();
      };
    }
  }
  return typed as TypedClient<D>;
}
