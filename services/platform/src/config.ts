/**
 * Typed configuration from environment variables.
 *
 * Each service's `config.ts` reads its variables through an `EnvReader` and calls `finish()`, which
 * throws one `ConfigError` listing every problem at once (fail fast, fix everything in one go).
 * Every variable has a description and a documented default; `describe()` lists them for the
 * README's configuration table. Nothing outside a `config.ts` reads `process.env`.
 */
import { accessSync, constants, statSync } from 'node:fs';
import { MongoClient } from 'mongodb';
import { serverUrlProblems } from './events/server-urls';

/** Thrown by `EnvReader.finish()` when any variable is missing or malformed. */
export class ConfigError extends Error {
  readonly problems: readonly string[];

  constructor(problems: readonly string[]) {
    super(`invalid configuration:\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

/** One documented variable, as listed by `describe()`. */
export interface VariableDoc {
  readonly name: string;
  readonly description: string;
  /** The default as a person would write it, or undefined when the variable is optional/required. */
  readonly default: string | undefined;
  readonly required: boolean;
}

interface Spec<T> {
  readonly description: string;
  readonly default?: T;
}

const DURATION_UNITS_MS: Readonly<Record<string, number>> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/**
 * The longest duration a timer can wait: Node.js runs a longer `setTimeout`/`setInterval` after
 * 1 ms instead (with a warning), so a longer interval would busy-loop. The default maximum of
 * {@link EnvReader.durationMs}; durations that are not timers (retention, TTLs) give their own.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** Parses `250ms`, `5s`, `1.5m`, `2h`, `7d` or a bare number of milliseconds. */
export function parseDurationMs(text: string): number | undefined {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(text.trim());
  if (!match) return undefined;
  const value = Number(match[1]);
  const unit = DURATION_UNITS_MS[match[2] ?? 'ms'] ?? 1;
  return Math.round(value * unit);
}

function formatDurationMs(ms: number): string {
  for (const [unit, size] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/** Reads and validates variables from an environment map, collecting every problem. */
export class EnvReader {
  private readonly problems: string[] = [];
  private readonly docs: VariableDoc[] = [];

  constructor(private readonly env: Readonly<Record<string, string | undefined>>) {}

  /** A string with a default. */
  string(name: string, spec: Spec<string> & { default: string }): string {
    this.document(name, spec.description, spec.default, false);
    return this.raw(name) ?? spec.default;
  }

  /** A string that may be absent. */
  optionalString(name: string, spec: { description: string }): string | undefined {
    this.document(name, spec.description, undefined, false);
    return this.raw(name);
  }

  /** A string that must be present. */
  requiredString(name: string, spec: { description: string }): string {
    this.document(name, spec.description, undefined, true);
    const value = this.raw(name);
    if (value === undefined) this.problems.push(`${name} is required: ${spec.description}`);
    return value ?? '';
  }

  /** An integer within [min, max]. */
  integer(
    name: string,
    spec: Spec<number> & { default: number; min?: number; max?: number },
  ): number {
    this.document(name, spec.description, String(spec.default), false);
    const raw = this.raw(name);
    if (raw === undefined) return spec.default;
    const value = Number(raw);
    if (!Number.isInteger(value)) {
      this.problems.push(`${name} must be an integer, got "${raw}"`);
      return spec.default;
    }
    return this.inRange(name, value, spec.min, spec.max) ? value : spec.default;
  }

  /** A finite number within [min, max]. */
  number(
    name: string,
    spec: Spec<number> & { default: number; min?: number; max?: number },
  ): number {
    this.document(name, spec.description, String(spec.default), false);
    const raw = this.raw(name);
    if (raw === undefined) return spec.default;
    const value = Number(raw);
    if (!Number.isFinite(value)) {
      this.problems.push(`${name} must be a number, got "${raw}"`);
      return spec.default;
    }
    return this.inRange(name, value, spec.min, spec.max) ? value : spec.default;
  }

  /** `true/false`, `1/0`, `yes/no`. */
  boolean(name: string, spec: Spec<boolean> & { default: boolean }): boolean {
    this.document(name, spec.description, String(spec.default), false);
    const raw = this.raw(name)?.toLowerCase();
    if (raw === undefined) return spec.default;
    if (['true', '1', 'yes'].includes(raw)) return true;
    if (['false', '0', 'no'].includes(raw)) return false;
    this.problems.push(`${name} must be true or false, got "${raw}"`);
    return spec.default;
  }

  /**
   * A duration such as `5s` or `250ms`, returned in milliseconds; at most `max`, which is
   * {@link MAX_TIMER_MS} unless given.
   */
  durationMs(
    name: string,
    spec: Spec<number> & { default: number; min?: number; max?: number },
  ): number {
    this.document(name, spec.description, formatDurationMs(spec.default), false);
    const raw = this.raw(name);
    if (raw === undefined) return spec.default;
    const value = parseDurationMs(raw);
    if (value === undefined) {
      this.problems.push(`${name} must be a duration like 500ms, 5s, 1m, 2h; got "${raw}"`);
      return spec.default;
    }
    const max = spec.max ?? MAX_TIMER_MS;
    if (value > max) {
      this.problems.push(
        max === MAX_TIMER_MS
          ? `${name} must be at most ${MAX_TIMER_MS}ms (about 24.8 days, the longest a timer waits), got "${raw}"`
          : `${name} must be at most ${formatDurationMs(max)}, got "${raw}"`,
      );
      return spec.default;
    }
    return this.inRange(name, value, spec.min, undefined) ? value : spec.default;
  }

  /** One of a fixed set of values. */
  oneOf<const T extends string>(
    name: string,
    values: readonly T[],
    spec: Spec<T> & { default: T },
  ): T {
    this.document(name, `${spec.description} (one of: ${values.join(', ')})`, spec.default, false);
    const raw = this.raw(name);
    if (raw === undefined) return spec.default;
    if ((values as readonly string[]).includes(raw)) return raw as T;
    this.problems.push(`${name} must be one of ${values.join(', ')}; got "${raw}"`);
    return spec.default;
  }

  /** Records a problem found by cross-field validation in a service's config. */
  problem(message: string): void {
    this.problems.push(message);
  }

  /** Throws a `ConfigError` with every problem found so far. */
  finish(): void {
    if (this.problems.length > 0) throw new ConfigError(this.problems);
  }

  /** Every variable read so far, for documentation. */
  describe(): readonly VariableDoc[] {
    return this.docs;
  }

  private raw(name: string): string | undefined {
    const value = this.env[name];
    return value === undefined || value.trim() === '' ? undefined : value.trim();
  }

  private inRange(name: string, value: number, min?: number, max?: number): boolean {
    if (min !== undefined && value < min) {
      this.problems.push(`${name} must be at least ${min}, got ${value}`);
      return false;
    }
    if (max !== undefined && value > max) {
      this.problems.push(`${name} must be at most ${max}, got ${value}`);
      return false;
    }
    return true;
  }

  private document(
    name: string,
    description: string,
    def: string | undefined,
    required: boolean,
  ): void {
    if (!this.docs.some((d) => d.name === name))
      this.docs.push({ name, description, default: def, required });
  }
}

/** Settings every service shares; each service's config embeds them. */
export interface PlatformConfig {
  /** Short service name, for example `assignment`. */
  readonly service: string;
  readonly grpc: {
    readonly host: string;
    readonly port: number;
    /** Largest request or response accepted, in bytes. */
    readonly maxMessageBytes: number;
    /** How long graceful shutdown waits for in-flight calls before cancelling them. */
    readonly shutdownTimeoutMs: number;
    readonly keepaliveTimeMs: number;
    readonly keepaliveTimeoutMs: number;
    /** Handler pacing's slice of the event loop, in microseconds; 0 turns pacing off. */
    readonly handlerSliceUs: number;
  };
  /** TLS for the gRPC server and clients; plaintext when absent. */
  readonly tls:
    | { readonly certFile: string; readonly keyFile: string; readonly caFile: string | undefined }
    | undefined;
  /** Bearer token required by admin RPCs; admin RPCs are open when absent (dev). */
  readonly adminToken: string | undefined;
  /** NATS server URL(s); the in-process bus is used when absent. */
  readonly natsUrl: string | undefined;
  /** MongoDB connection string; the embedded store is used when absent. */
  readonly mongodbUri: string | undefined;
  /** Where the embedded store keeps its files. */
  readonly dataDir: string;
  readonly logLevel: 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';
}

/**
 * The shortest admin token taken. It is a password any client may try over the network, not
 * rate-limited: a short one (`admin`, `changeme`) is guessed, and a random one this long is not.
 */
export const MIN_ADMIN_TOKEN_LENGTH = 16;

/** Why `path` cannot be read (an error code such as ENOENT), or undefined when it can. */
function unreadable(path: string): string | undefined {
  try {
    accessSync(path, constants.R_OK);
    // A readable directory passes the access check (a mounted secret named instead of its file),
    // and start-up would then fail reading it with a bare EISDIR naming neither variable nor path.
    if (statSync(path).isDirectory()) return 'EISDIR';
    return undefined;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code ?? String(error);
  }
}

/**
 * What the MongoDB driver finds wrong with `uri` (it parses and checks every option when a client
 * is made, without connecting), or undefined. Its messages name hosts, never credentials.
 */
function connectionStringProblem(uri: string): string | undefined {
  try {
    new MongoClient(uri);
    return undefined;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

/** Reads the shared settings; `defaultPort` is the service's own default port. */
export function readPlatformConfig(
  env: EnvReader,
  service: string,
  defaultPort: number,
): PlatformConfig {
  const upper = service.toUpperCase();
  const certFile = env.optionalString('TANDEM_TLS_CERT_FILE', {
    description: 'PEM certificate chain for gRPC TLS; plaintext when unset',
  });
  const keyFile = env.optionalString('TANDEM_TLS_KEY_FILE', {
    description: 'PEM private key for gRPC TLS (with TANDEM_TLS_CERT_FILE)',
  });
  const caFile = env.optionalString('TANDEM_TLS_CA_FILE', {
    description:
      'PEM CA bundle: clients verify servers with it; when set on a server, client certificates are required',
  });
  if ((certFile === undefined) !== (keyFile === undefined)) {
    env.problem('TANDEM_TLS_CERT_FILE and TANDEM_TLS_KEY_FILE must be set together');
  } else if (caFile !== undefined && certFile === undefined) {
    // Alone it would change nothing: the server would run in plaintext, not require certificates.
    env.problem('TANDEM_TLS_CA_FILE needs TANDEM_TLS_CERT_FILE and TANDEM_TLS_KEY_FILE');
  }
  for (const [name, path] of [
    ['TANDEM_TLS_CERT_FILE', certFile],
    ['TANDEM_TLS_KEY_FILE', keyFile],
    ['TANDEM_TLS_CA_FILE', caFile],
  ] as const) {
    const problem = path === undefined ? undefined : unreadable(path);
    if (problem !== undefined) env.problem(`${name}: cannot read "${path}" (${problem})`);
  }
  const adminToken = env.optionalString('TANDEM_ADMIN_TOKEN', {
    description:
      'Bearer token admin RPCs require (`authorization: Bearer <token>`, at least 16 characters); admin RPCs are open when unset',
  });
  // What an HTTP/2 header (and grpc-js metadata) carries: one no client can send locks every
  // admin RPC out.
  if (adminToken !== undefined && !/^[!-~]+( [!-~]+)*$/.test(adminToken)) {
    env.problem(
      'TANDEM_ADMIN_TOKEN: use printable ASCII, without leading, trailing or repeated spaces (what a header value carries)',
    );
  } else if (adminToken !== undefined && adminToken.length < MIN_ADMIN_TOKEN_LENGTH) {
    env.problem(
      `TANDEM_ADMIN_TOKEN must be at least ${MIN_ADMIN_TOKEN_LENGTH} characters, got ${adminToken.length}; for example \`openssl rand -base64 24\``,
    );
  }
  const natsUrl = env.optionalString('NATS_URL', {
    description: 'NATS server URL(s), comma-separated; the in-process event bus is used when unset',
  });
  for (const problem of natsUrl === undefined ? [] : serverUrlProblems(natsUrl)) {
    env.problem(`NATS_URL: ${problem}`);
  }
  const mongodbUri = env.optionalString('MONGODB_URI', {
    description:
      'MongoDB connection string; the embedded LMDB store under TANDEM_DATA_DIR is used when unset',
  });
  const mongodbProblem = mongodbUri === undefined ? undefined : connectionStringProblem(mongodbUri);
  if (mongodbProblem !== undefined) {
    env.problem(`MONGODB_URI is not a MongoDB connection string: ${mongodbProblem}`);
  }
  return {
    service,
    grpc: {
      host: env.string('TANDEM_GRPC_HOST', {
        default: '0.0.0.0',
        description: 'Address the gRPC servers bind to',
      }),
      port: env.integer(`TANDEM_${upper}_PORT`, {
        default: defaultPort,
        min: 0,
        max: 65535,
        description: `gRPC port of the ${service} service (0 picks a free port)`,
      }),
      maxMessageBytes: env.integer('TANDEM_GRPC_MAX_MESSAGE_BYTES', {
        default: 16 * 1024 * 1024,
        min: 1024,
        description:
          'Largest gRPC message accepted or sent; larger ones fail with RESOURCE_EXHAUSTED',
      }),
      shutdownTimeoutMs: env.durationMs('TANDEM_SHUTDOWN_TIMEOUT', {
        default: 10_000,
        // The process's own deadline adds margins (and `make dev` adds the services'): an hour
        // leaves them far within what a timer can wait.
        max: 3_600_000,
        description:
          'Graceful shutdown deadline: in-flight calls get this long before being cancelled',
      }),
      keepaliveTimeMs: env.durationMs('TANDEM_GRPC_KEEPALIVE_TIME', {
        default: 30_000,
        // grpc-js sends no keepalive pings at 0.
        description: 'Interval of HTTP/2 keepalive pings on idle connections; 0 sends none',
      }),
      keepaliveTimeoutMs: env.durationMs('TANDEM_GRPC_KEEPALIVE_TIMEOUT', {
        default: 10_000,
        // grpc-js destroys a connection whose ping is not answered within it, with its calls in
        // flight: 0 (which reads like "no timeout") or a few ms would drop every connection at
        // its first keepalive ping. A second leaves room for a round trip behind a busy loop.
        min: 1000,
        description: 'A connection whose keepalive ping is not answered within this is closed',
      }),
      handlerSliceUs: env.integer('TANDEM_GRPC_HANDLER_SLICE_US', {
        default: 500,
        min: 0,
        max: 1_000_000,
        description:
          'Microseconds of the event loop the handlers of calls arriving together run before later ones wait for the next turn; 0 turns this pacing off',
      }),
    },
    tls:
      certFile !== undefined && keyFile !== undefined ? { certFile, keyFile, caFile } : undefined,
    adminToken,
    natsUrl,
    mongodbUri,
    dataDir: env.string('TANDEM_DATA_DIR', {
      default: './.tandem-data',
      description: 'Directory of the embedded store (one sub-directory per service)',
    }),
    logLevel: env.oneOf(
      'LOG_LEVEL',
      ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'],
      {
        default: 'info',
        description: 'pino log level',
      },
    ),
  };
}
