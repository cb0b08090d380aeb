/**
 * The runtime kit's cost per call: the echo service served by a bare grpc-js server vs through the
 * kit (handler adapter, error mapping, trace propagation hooks), same client, same run. Every
 * service's latency budget is stated against the bare echo, so this is the kit's share of it.
 * A third server, the kit with handler pacing off, gives pacing's own share: an echo handler is
 * the case where pacing has the least to gain, since its answers are ready at once.
 *
 * The servers run at once, are warmed first, and each concurrency is measured in BENCH_ROUNDS
 * rounds (7 by default, see `benchRounds`), each interleaving the servers in half-second slices
 * (`measureInterleaved`); the ratios reported are the medians of the rounds' ratios.
 * One cold round per server, as this benchmark first did, gave ratios from 0.72x to 1.56x on the
 * same build.
 */
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { EchoServiceService } from '../gen/ts/tandem/echo/v1/echo_service';
import { createClient } from '../services/platform/src/grpc/client';
import { benchRounds, median, runLoad } from './support/load';
import {
  measureInterleaved,
  measuredRow,
  startServerProcess,
  type Measured,
} from './support/server-process';

const durationMs = Number(process.env.BENCH_DURATION_MS ?? 4000);
const rounds = benchRounds();

/** The p99, throughput and server CPU per call ratios of one server to another, per round. */
class Ratios {
  private readonly p99: number[] = [];
  private readonly throughput: number[] = [];
  private readonly cpu: number[] = [];

  add(server: Measured, peer: Measured): void {
    this.p99.push(server.result.p99Ms / peer.result.p99Ms);
    this.throughput.push(server.result.callsPerSecond / peer.result.callsPerSecond);
    this.cpu.push((server.serverCpuUsPerCall ?? NaN) / (peer.serverCpuUsPerCall ?? NaN));
  }

  summary(): string {
    return `p99 ${median(this.p99).toFixed(2)}x, throughput ${median(this.throughput).toFixed(2)}x, server CPU per call ${median(this.cpu).toFixed(2)}x`;
  }
}

async function main(): Promise<void> {
  console.log(
    `kit overhead: echo, ~100-byte messages, ${durationMs} ms per run, client and servers in separate processes`,
  );
  const request = { message: 'x'.repeat(100), failWithCode: 0, requireMessage: false };
  const peers = await Promise.all(
    (['bare', 'kit', 'kit-unpaced'] as const).map(async (mode) => {
      const server = await startServerProcess(join(__dirname, 'support', 'echo-server.js'), [mode]);
      const client = createClient(EchoServiceService, {
        address: server.address,
        credentials: credentials.createInsecure(),
      });
      return { server, client, call: () => client.echo(request) };
    }),
  );
  const [bare, kit, unpaced] = peers as [(typeof peers)[0], (typeof peers)[0], (typeof peers)[0]];
  for (const concurrency of [64, 1]) {
    for (const peer of peers) {
      await runLoad(peer.call, { concurrency, durationMs: 1500, warmupMs: 500 });
    }
  }
  for (const concurrency of [1, 64]) {
    console.log(`\nconcurrency ${concurrency}`);
    const kitRatios = new Ratios();
    const pacingRatios = new Ratios();
    for (let round = 1; round <= rounds; round++) {
      const [viaBare, viaKit, viaUnpaced] = await measureInterleaved([bare, kit, unpaced], {
        concurrency,
        durationMs,
      });
      console.log(measuredRow(`round ${round}: bare grpc-js echo`, viaBare));
      console.log(measuredRow(`round ${round}: echo through the kit`, viaKit));
      console.log(measuredRow(`round ${round}: the kit, pacing off`, viaUnpaced));
      kitRatios.add(viaKit, viaBare);
      pacingRatios.add(viaKit, viaUnpaced);
    }
    console.log(`ratio kit/bare (median of ${rounds}): ${kitRatios.summary()}`);
    console.log(`ratio kit/kit with pacing off (median of ${rounds}): ${pacingRatios.summary()}`);
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
