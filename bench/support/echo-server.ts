/**
 * Benchmark peer: the echo service as a bare grpc-js server (`bare`, no kit: the ceiling for a
 * unary call on this machine) or through the runtime kit (`kit`: adapter, error mapping, tracing
 * hooks, health and reflection), in its own process; `kit-unpaced` is the kit with handler pacing
 * off (`TANDEM_GRPC_HANDLER_SLICE_US=0`), to measure what pacing costs a trivial handler.
 * Usage: node echo-server.js bare|kit|kit-unpaced
 */
import { Server, ServerCredentials } from '@grpc/grpc-js';
import {
  EchoServiceService,
  type EchoRequest,
  type EchoResponse,
} from '../../gen/ts/tandem/echo/v1/echo_service';
import { implement, setHandlerSlice } from '../../services/platform/src/grpc/handlers';
import { GrpcServer } from '../../services/platform/src/grpc/server';
import { createLogger } from '../../services/platform/src/logging';
import { serveBenchmarkProcess } from './server-process';

async function main(): Promise<void> {
  const mode = process.argv[2] ?? 'bare';
  if (mode === 'bare') {
    const server = new Server();
    server.addService(EchoServiceService, {
      echo: (call: { request: EchoRequest }, callback: (e: null, r: EchoResponse) => void) => {
        callback(null, { message: call.request.message, traceId: '' });
      },
    });
    const port = await new Promise<number>((resolve, reject) => {
      server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (e, p) => {
        if (e) reject(e);
        else resolve(p);
      });
    });
    serveBenchmarkProcess(port);
    return;
  }
  if (mode === 'kit-unpaced') setHandlerSlice(0);
  const logger = createLogger({ service: 'bench-echo', level: 'warn' });
  const server = new GrpcServer({
    logger,
    credentials: ServerCredentials.createInsecure(),
    maxMessageBytes: 4 * 1024 * 1024,
    keepaliveTimeMs: 30_000,
    keepaliveTimeoutMs: 10_000,
  });
  server.add(
    EchoServiceService,
    implement(
      EchoServiceService,
      { echo: (request) => Promise.resolve({ message: request.message, traceId: '' }) },
      { logger },
    ),
  );
  const port = await server.listen('127.0.0.1', 0);
  server.setServing(true);
  serveBenchmarkProcess(port);
}

void main();
