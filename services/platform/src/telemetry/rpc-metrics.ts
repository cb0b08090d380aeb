/**
 * The server's call durations as an OpenTelemetry histogram, `rpc.server.call.duration` (seconds,
 * from the handler's start to its settling), with the RPC semantic conventions' attributes:
 * `rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`. Exported only when
 * telemetry exports metrics (see `sdk.ts`); otherwise recording is the API's no-op.
 */
import type { status as GrpcCode } from '@grpc/grpc-js';
import { metrics, type Attributes, type Histogram } from '@opentelemetry/api';
import { parseMethodPath } from './rpc-spans';

/** Bucket bounds in seconds: the calls here take from a fraction of a millisecond to seconds. */
const BOUNDARIES = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

let histogram: Histogram | undefined;

/** Made at the first call, after start-up has registered the SDK's meter provider (if any). */
function durationHistogram(): Histogram {
  histogram ??= metrics.getMeter('tandem.grpc').createHistogram('rpc.server.call.duration', {
    description: 'Duration of gRPC calls, from the handler starting to its answer',
    unit: 's',
    advice: { explicitBucketBoundaries: BOUNDARIES },
  });
  return histogram;
}

/**
 * The recorder of one method's calls: `started` is `performance.now()` at the call's start. The
 * attributes are made once per status code, so recording allocates nothing.
 */
export function rpcDurationRecorder(path: string): (started: number, code: GrpcCode) => void {
  const { service, method } = parseMethodPath(path);
  const byCode = new Map<number, Attributes>();
  return (started, code) => {
    let attributes = byCode.get(code);
    if (attributes === undefined) {
      attributes = Object.freeze({
        'rpc.system': 'grpc',
        'rpc.service': service,
        'rpc.method': method,
        'rpc.grpc.status_code': code,
      });
      byCode.set(code, attributes);
    }
    durationHistogram().record((performance.now() - started) / 1000, attributes);
  };
}

/** Forgets the histogram, for tests that register a meter provider of their own. */
export function resetRpcMetrics(): void {
  histogram = undefined;
}
