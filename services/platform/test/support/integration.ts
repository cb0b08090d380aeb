/**
 * Gates for integration tests that need a real server. A suite that cannot reach its server is
 * skipped with a line saying so; with TANDEM_REQUIRE_NATS=1 / TANDEM_REQUIRE_MONGODB=1 (set by
 * .ci/run) it fails instead, so CI can never go green by skipping.
 */
function gate(
  name: string,
  variable: string,
  value: string | undefined,
  requiredBy: string,
): jest.Describe {
  if (value) return describe;
  if (process.env[requiredBy] === '1') {
    throw new Error(`${name} is required (${requiredBy}=1) but ${variable} is not set`);
  }

  console.warn(`SKIPPED: ${name} integration tests (set ${variable} to run them)`);
  return describe.skip;
}

/** The NATS server URL for tests, when one is available. */
export const natsUrl: string | undefined = process.env.NATS_URL;
/** The MongoDB URI for tests, when one is available. */
export const mongodbUri: string | undefined = process.env.MONGODB_URI;

/** `describe` when a NATS JetStream server is available, else `describe.skip` with a message. */
export const describeWithNats = (title: string, fn: () => void): void => {
  gate(
    'NATS JetStream',
    'NATS_URL (or install nats-server)',
    natsUrl,
    'TANDEM_REQUIRE_NATS',
  )(title, fn);
};

/** `describe` when a MongoDB-compatible server is available, else `describe.skip` with a message. */
export const describeWithMongo = (title: string, fn: () => void): void => {
  gate('MongoDB', 'MONGODB_URI', mongodbUri, 'TANDEM_REQUIRE_MONGODB')(title, fn);
};

/** A name unique to this test run, for databases, streams and durables. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${process.pid}_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`;
}
