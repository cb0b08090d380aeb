/**
 * The runtime kit's cost per call: the echo service served by a bare grpc-js server vs through the
 * kit (handler adapter, error mapping, trace propagation hooks), same client, same run. Every
 * service's latency budget is stated against the bare echo, so this is the kit's share of it.
 *
 * Both servers run at once, are warmed first, and each concurrency is measured in BENCH_ROUNDS
 * rounds (7 by default, see `benchRounds`), each interleaving the two servers in half-second slices
 * (`measureInterleaved`); the ratios reported are the medians of the rounds' ratios.
 * One cold round per server, as this benchmark first did, gave ratios from 0.72x to 1.56x on the
 * same build.
 */
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { EchoServiceService } from '../gen/ts/tandem/echo/v1/echo_service';
import { createClient } from '../services/platform/src/grpc/client';
import { benchRounds, median, runLoad } from './support/load';
import { measureInterleaved, measuredRow, startServerProcess } from './support/server-process';

const durationMs = Number(process.env.BENCH_DURATION_MS ?? 4000);
const rounds = benchRounds();

async function main(): Promise<void> {
  console.log(
    `kit overhead: echo, ~100-byte messages, ${durationMs} ms per run, client and servers in separate processes`,
  );
  const request = { message: 'x'.repeat(100), failWithCode: 0, requireMessage: false };
  const peers = await Promise.all(
    (['bare', 'kit'] as const).map(async (mode) => {
      const server = await startServerProcess(join(__dirname, 'support', 'echo-server.js'), [mode]);
      const client = createClient(EchoServiceService, {
        address: server.address,
        credentials: credentials.createInsecure(),
      });
      return { server, client, call: () => client.echo(request) };
    }),
  );
  const [bare, kit] = peers as [(typeof peers)[0], (typeof peers)[0]];
  for (const concurrency of [64, 1]) {
    for (const peer of peers) {
      await runLoad(peer.call, { concurrency, durationMs: 1500, warmupMs: 500 });
    }
  }
  for (const concurrency of [1, 64]) {
    console.log(`\nconcurrency ${concurrency}`);
    const p99Ratios: number[] = [];
    const throughputRatios: number[] = [];
    const cpuRatios: number[] = [];
    for (let round = 1; round <= rounds; round++) {
      const [viaBare, viaKit] = await measureInterleaved([bare, kit], { concurrency, durationMs });
      console.log(measuredRow(`round ${round}: bare grpc-js echo`, viaBare));
      console.log(measuredRow(`round ${round}: echo through the kit`, viaKit));
      p99Ratios.push(viaKit.result.p99Ms / viaBare.result.p99Ms);
      throughputRatios.push(viaKit.result.callsPerSecond / viaBare.result.callsPerSecond);
      cpuRatios.push((viaKit.serverCpuUsPerCall ?? NaN) / (viaBare.serverCpuUsPerCall ?? NaN));
    }
    console.log(
      `ratio kit/bare (median of ${rounds}): p99 ${median(p99Ratios).toFixed(2)}x, throughput ${median(throughputRatios).toFixed(2)}x, server CPU per call ${median(cpuRatios).toFixed(2)}x`,
    );
  }
  for (const peer of peers) {
    peer.client.close();
    await peer.server.stop();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
