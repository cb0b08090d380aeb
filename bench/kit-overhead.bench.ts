/**
 * The runtime kit's cost per call: the echo service served by a bare grpc-js server vs through the
 * kit (handler adapter, error mapping, trace propagation hooks), same client, same run. Every
 * service's latency budget is stated against the bare echo, so this is the kit's share of it.
 */
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { EchoServiceService } from '../gen/ts/tandem/echo/v1/echo_service';
import { createClient } from '../services/platform/src/grpc/client';
import { formatRow, runLoad } from './support/load';
import { startServerProcess } from './support/server-process';

const durationMs = Number(process.env.BENCH_DURATION_MS ?? 4000);

async function measure(mode: 'bare' | 'kit', concurrency: number) {
  const server = await startServerProcess(join(__dirname, 'support', 'echo-server.js'), [mode]);
  const client = createClient(EchoServiceService, {
    address: server.address,
    credentials: credentials.createInsecure(),
  });
  const request = { message: 'x'.repeat(100), failWithCode: 0, requireMessage: false };
  const cpuBefore = await server.cpuMicros();
  const result = await runLoad(() => client.echo(request), { concurrency, durationMs });
  const cpuAfter = await server.cpuMicros();
  client.close();
  await server.stop();
  // Includes warm-up calls in the CPU window; close enough to compare the two modes.
  return { result, serverCpuUsPerCall: (cpuAfter - cpuBefore) / Math.max(1, result.calls) };
}

async function main(): Promise<void> {
  console.log(
    `kit overhead: echo, ~100-byte messages, ${durationMs} ms per run, client and server in separate processes`,
  );
  for (const concurrency of [1, 64]) {
    const bare = await measure('bare', concurrency);
    const kit = await measure('kit', concurrency);
    console.log(`\nconcurrency ${concurrency}`);
    console.log(
      `${formatRow('bare grpc-js echo', bare.result)}   server CPU ~${bare.serverCpuUsPerCall.toFixed(0)} µs/call`,
    );
    console.log(
      `${formatRow('echo through the kit', kit.result)}   server CPU ~${kit.serverCpuUsPerCall.toFixed(0)} µs/call`,
    );
    console.log(
      `ratio kit/bare: p99 ${(kit.result.p99Ms / bare.result.p99Ms).toFixed(2)}x, throughput ${(kit.result.callsPerSecond / bare.result.callsPerSecond).toFixed(2)}x`,
    );
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
