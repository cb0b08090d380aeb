/**
 * gRPC server bootstrap: message-size limits, keepalive, `grpc.health.v1` (NOT_SERVING until the
 * service says it is ready), server reflection from the committed descriptor set (listing the
 * services this server hosts and health, not every contract in the set), and graceful shutdown
 * with a deadline.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import {
  Server,
  type ServerCredentials,
  type ServerWritableStream,
  type ServiceDefinition,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import type { PackageDefinition, ProtobufTypeDefinition } from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation, type ServingStatus } from 'grpc-health-check';
import type { UnavailableError } from '../errors';
import type { Logger } from '../logging';
import { findDescriptorSet } from './descriptor-set';
import {
  decodingRequestsSafely,
  implement,
  passingSerializedResponses,
  type Handlers,
  type RequestByteLimits,
} from './handlers';

export interface GrpcServerOptions {
  readonly logger: Logger;
  readonly credentials: ServerCredentials;
  /** Largest request/response in bytes; larger ones fail with RESOURCE_EXHAUSTED. */
  readonly maxMessageBytes: number;
  readonly keepaliveTimeMs: number;
  readonly keepaliveTimeoutMs: number;
  /**
   * Serve reflection from this descriptor set (and `health.binpb` beside it, when there is one).
   * @default findDescriptorSet(); false disables it
   */
  readonly reflection?: string | false;
}

/** A registered service, named as in health checks (`tandem.echo.v1.EchoService`). */
interface Registered {
  readonly name: string;
  /** The definition registered by `reserve`, replaced when `add` supplies the implementation. */
  reserved?: ServiceDefinition;
}

const HEALTH_SERVICE = 'grpc.health.v1.Health';

/**
 * The `FileDescriptorProto`s of a serialized `FileDescriptorSet`, each encoded on its own. The
 * package definition proto-loader makes re-encodes them without their `dependency` lists, and
 * reflection clients that link what they receive (grpcurl, buf curl) then cannot resolve a single
 * service, so reflection is given these instead.
 */
function fileDescriptors(descriptorSet: Uint8Array): Buffer[] {
  return fromBinary(FileDescriptorSetSchema, descriptorSet).file.map((file) =>
    Buffer.from(toBinary(FileDescriptorProtoSchema, file)),
  );
}

function serviceName(definition: ServiceDefinition): string {
  const first = Object.values(definition)[0];
  return first ? (first.path.split('/')[1] ?? '') : '';
}

/**
 * One gRPC server hosting one or more services. Lifecycle: `add` (or `reserve`) every service
 * (health says NOT_SERVING), `listen`, `setServing(true)` once dependencies are ready; `shutdown`
 * reverses it. Reflection lists the services registered when `listen` is called.
 */
/** What a reserved service's methods take for a request: they answer without reading it. */
const NOT_DECODED = Object.freeze({});

export class GrpcServer {
  private readonly server: Server;
  private readonly health: HealthImplementation;
  private readonly services: Registered[] = [];
  private readonly logger: Logger;
  private readonly credentials: ServerCredentials;
  private port: number | undefined;
  private stopping: Promise<void> | undefined;
  /**
   * Open server-streaming calls of health and reflection (`Health/Watch`, a GUI client's
   * `ServerReflectionInfo`), ended on shutdown: each would hold the server open until the
   * deadline, which then cancels every call still in flight.
   */
  private readonly openStreams = new Set<ServerWritableStream<unknown, unknown>>();
  /**
   * The contracts reflection serves: the descriptor set's files byte for byte, and
   * grpc-health-check's (built beside it by `make gen`); undefined when reflection is off.
   */
  private readonly descriptorFiles: Buffer[] | undefined;

  constructor(private readonly options: GrpcServerOptions) {
    this.logger = options.logger;
    this.credentials = options.credentials;
    this.server = new Server({
      'grpc.max_receive_message_length': options.maxMessageBytes,
      'grpc.max_send_message_length': options.maxMessageBytes,
      'grpc.keepalive_time_ms': options.keepaliveTimeMs,
      'grpc.keepalive_timeout_ms': options.keepaliveTimeoutMs,
      'grpc.keepalive_permit_without_calls': 1,
      // Let clients ping as often as every 10 s without being told to go away.
      'grpc.http2.min_ping_interval_without_data_ms': 10_000,
    });
    // The empty name is the whole server's status, which load balancers and kubelets probe.
    this.health = new HealthImplementation({ '': 'NOT_SERVING' });
    this.health.addToServer(this.streamsTracked());
    // Read now, so that a missing descriptor set fails start-up before anything is opened.
    if (options.reflection !== false) {
      const path = options.reflection ?? findDescriptorSet();
      const health = join(dirname(path), 'health.binpb');
      this.descriptorFiles = [
        ...fileDescriptors(readFileSync(path)),
        ...(existsSync(health) ? fileDescriptors(readFileSync(health)) : []),
      ];
    }
  }

  /**
   * Serves reflection for the services registered so far and health: the descriptor set holds
   * every Tandem contract, and a client listing a server's services must see only what it serves.
   */
  private addReflection(): void {
    if (this.descriptorFiles === undefined) return;
    // Reflection reads nothing of a definition's entries but their file descriptors.
    const files: ProtobufTypeDefinition = {
      format: 'FileDescriptorSet',
      type: {},
      fileDescriptorProtos: this.descriptorFiles,
    };
    const contracts = { tandem: files } as PackageDefinition;
    const services = [...this.services.map((service) => service.name), HEALTH_SERVICE];
    new ReflectionService(contracts, { services }).addToServer(this.streamsTracked());
  }

  /**
   * Registers a service; it reports NOT_SERVING until `setServing(true)`. A service `reserve`d
   * earlier gets its implementation now, in place of the one answering UNAVAILABLE. A request
   * of a method in `limits` larger than its limit is answered RESOURCE_EXHAUSTED
   * (`REQUEST_TOO_LARGE`) without being decoded.
   */
  add<D extends ServiceDefinition>(
    definition: D,
    implementation: UntypedServiceImplementation,
    limits: RequestByteLimits<D> = {},
  ): void {
    const name = serviceName(definition);
    const registered = this.services.find((service) => service.name === name);
    if (registered === undefined && this.port !== undefined) {
      throw new Error(`${name} added after listen(): reserve it before, so reflection lists it`);
    }
    if (registered?.reserved) {
      // Both synchronous: no call can arrive in between and find the method missing.
      this.server.removeService(registered.reserved);
      registered.reserved = undefined;
    } else {
      this.services.push({ name });
    }
    this.server.addService(
      passingSerializedResponses(decodingRequestsSafely(definition, limits)),
      implementation,
    );
    this.health.setStatus(name, 'NOT_SERVING');
  }

  /**
   * Registers a service whose implementation does not exist yet (the server is bound before its
   * dependencies are ready): until `add` supplies it, every call gets the UNAVAILABLE `why` makes
   * (with its ErrorInfo and RetryInfo) rather than UNIMPLEMENTED, and health reports the service
   * NOT_SERVING.
   */
  reserve(definition: ServiceDefinition, why: () => UnavailableError): void {
    const name = serviceName(definition);
    // Through the kit's own call handling, so these calls have their spans and are counted in
    // `rpc.server.call.duration` like any other.
    const handlers: Record<string, unknown> = {};
    for (const [method, { responseStream }] of Object.entries(definition)) {
      handlers[method] = responseStream
        ? (): AsyncIterable<never> => ({
            [Symbol.asyncIterator]: () => ({ next: () => Promise.reject(why()) }),
          })
        : () => Promise.reject(why());
    }
    const implementation = implement(definition, handlers as Handlers<typeof definition>, {
      logger: this.logger,
    });
    // Nothing is decoded: every call is answered UNAVAILABLE whatever it holds, so a large
    // request costs nothing before the limits `add` brings apply.
    const undecoded: Record<string, unknown> = {};
    for (const [method, attributes] of Object.entries(definition)) {
      undecoded[method] = { ...attributes, requestDeserialize: () => NOT_DECODED };
    }
    const reserved = passingSerializedResponses(undecoded as ServiceDefinition);
    this.server.addService(reserved, implementation);
    this.services.push({ name, reserved });
    this.health.setStatus(name, 'NOT_SERVING');
  }

  /** The bound port; undefined before `listen`. */
  get boundPort(): number | undefined {
    return this.port;
  }

  /** Binds and starts serving; returns the bound port (useful with port 0). */
  async listen(host: string, port: number): Promise<number> {
    this.addReflection();
    this.port = await new Promise<number>((resolve, reject) => {
      this.server.bindAsync(
        `${host.includes(':') ? `[${host}]` : host}:${port}`,
        this.credentials,
        (error, bound) => {
          if (error) reject(error);
          else resolve(bound);
        },
      );
    });
    this.logger.info(
      { port: this.port, services: this.services.map((s) => s.name) },
      'gRPC server listening',
    );
    return this.port;
  }

  /**
   * The server as grpc-health-check's and reflection's `addToServer` see it: their handlers run
   * as they are, with each call of a method that streams responses kept in {@link openStreams}
   * until it ends.
   */
  private streamsTracked(): Pick<Server, 'addService'> {
    return {
      addService: (service, implementation) => {
        const tracked: UntypedServiceImplementation = { ...implementation };
        for (const [name, method] of Object.entries(service)) {
          if (!method.responseStream) continue;
          // grpc-js finds a handler under the method's name or its name in the proto.
          const key = name in implementation ? name : method.originalName;
          const handler = key === undefined ? undefined : implementation[key];
          if (key === undefined || typeof handler !== 'function') continue;
          const stream = handler as (call: ServerWritableStream<unknown, unknown>) => void;
          tracked[key] = (call: ServerWritableStream<unknown, unknown>) => {
            this.openStreams.add(call);
            const forget = (): void => {
              this.openStreams.delete(call);
            };
            call.on('cancelled', forget);
            call.on('finish', forget);
            stream(call);
          };
        }
        this.server.addService(service, tracked);
      },
    };
  }

  /** Sets the health of every registered service and of the server as a whole. */
  setServing(serving: boolean): void {
    const status: ServingStatus = serving ? 'SERVING' : 'NOT_SERVING';
    this.health.setStatus('', status);
    for (const service of this.services) this.health.setStatus(service.name, status);
  }

  /**
   * Graceful shutdown: health goes NOT_SERVING (watchers are told, then their streams end), new
   * connections and calls are refused, in-flight calls get until `deadlineMs` to finish, then
   * remaining ones are cancelled.
   * Idempotent: a second call waits for the first.
   */
  shutdown(deadlineMs: number): Promise<void> {
    this.stopping ??= this.stop(deadlineMs);
    return this.stopping;
  }

  private async stop(deadlineMs: number): Promise<void> {
    this.setServing(false);
    // Watchers have been told NOT_SERVING; their streams (and reflection's) end (OK) rather than
    // hold the server open until the deadline cancels them.
    for (const call of this.openStreams) call.end();
    this.openStreams.clear();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.logger.warn(
          { deadlineMs },
          'graceful shutdown deadline passed: cancelling in-flight calls',
        );
        this.server.forceShutdown();
        resolve();
      }, deadlineMs);
      timer.unref();
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}
