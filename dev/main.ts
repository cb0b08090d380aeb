/**
 * `make dev`: the platform in one process on embedded defaults. Each service runs as in
 * production (its own gRPC port, its own store under TANDEM_DATA_DIR) but they share one event bus:
 * NATS when a server answers, else the in-process bus. A traffic simulator then plays a backend so
 * the loop is visible within a minute.
 */
import {
  serviceNameOf,
  startTelemetry,
  wantsMetricExport,
  wantsTraceExport,
} from '../services/platform/src/telemetry/sdk';

const telemetry = startTelemetry({
  serviceName: serviceNameOf(process.env, 'tandem-dev'),
  exportTraces: wantsTraceExport(process.env),
  exportMetrics: wantsMetricExport(process.env),
});

import { startAssignment } from '../services/assignment/src/service';
import { startFeatureStore } from '../services/featurestore/src/service';
import { bootstrap } from '../services/platform/src/bootstrap';
import type { EventBus } from '../services/platform/src/events/bus';
import { createInProcessBus } from '../services/platform/src/events/in-process-bus';
import { connectNatsBus } from '../services/platform/src/events/nats-bus';
import { Shutdown } from '../services/platform/src/lifecycle';
import { exitBeforeStartup } from '../services/platform/src/startup-failure';
import { createLogger, type Logger } from '../services/platform/src/logging';
import { readDevConfig, type DevConfig } from './config';
import { runSimulator } from './simulator';

/**
 * The bus the services share. `NATS_URL` set: that NATS, as a service connects to it (started in
 * the background while it does not answer; refused credentials, an unusable URL or a server
 * without JetStream fail start-up). Unset: the local NATS when it answers with JetStream, else
 * the in-process bus, saying why.
 */
async function connectDevBus(config: DevConfig, logger: Logger): Promise<EventBus> {
  const natsUrl = config.assignment.platform.natsUrl;
  if (natsUrl !== undefined) {
    return connectNatsBus({
      servers: natsUrl,
      name: 'tandem-dev',
      logger,
      whenUnreachable: 'connect-in-background',
    });
  }
  try {
    const bus = await connectNatsBus({
      servers: config.localNatsUrl,
      name: 'tandem-dev',
      logger,
      connectTimeoutMs: 1000,
      // No server: the in-process bus below rather than a bus waiting for one.
      whenUnreachable: 'fail',
    });
    logger.info('using NATS JetStream');
    return bus;
  } catch (error) {
    logger.info(
      { reason: error instanceof Error ? error.message : String(error) },
      'no usable NATS JetStream (NATS_URL is unset): using the in-process event bus',
    );
    return createInProcessBus({ logger });
  }
}

async function main(): Promise<void> {
  const config = readDevConfig(process.env);
  const logger = createLogger({ service: 'dev', level: config.assignment.platform.logLevel });
  const shutdown = new Shutdown(logger);
  shutdown.addFinal('telemetry', () => telemetry.shutdown());

  // The two services shut down one after the other, each within its own deadline (its drain
  // timeout and the kit's margin for the steps after it: flushing events, closing storage).
  const deadlineMs =
    config.assignment.platform.grpc.shutdownTimeoutMs +
    config.featurestore.platform.grpc.shutdownTimeoutMs +
    15_000;
  // A signal at any point closes what is open so far (Ctrl-C while the simulator sets up, too), and
  // a failure closes it too, rather than exit from under a store write.
  await shutdown.startUp(deadlineMs, async () => {
    const bus = await connectDevBus(config, logger);
    shutdown.add('event bus', () => bus.close());

    const assignment = await bootstrap(config.assignment.platform, {
      sharedBus: bus,
      logger: createLogger({ service: 'assignment', level: config.assignment.platform.logLevel }),
    });
    shutdown.add('assignment', () => assignment.shutdown.run(assignment.shutdownDeadlineMs));
    await startAssignment(assignment, config.assignment);
    const assignmentPort = await assignment.serve();

    const featurestore = await bootstrap(config.featurestore.platform, {
      sharedBus: bus,
      logger: createLogger({
        service: 'featurestore',
        level: config.featurestore.platform.logLevel,
      }),
    });
    shutdown.add('featurestore', () => featurestore.shutdown.run(featurestore.shutdownDeadlineMs));
    await startFeatureStore(featurestore, config.featurestore);
    const featurestorePort = await featurestore.serve();

    logger.info(
      { assignment: `localhost:${assignmentPort}`, featurestore: `localhost:${featurestorePort}` },
      'Tandem is up',
    );

    if (config.simulate) {
      await runSimulator({
        assignmentAddress: `127.0.0.1:${assignmentPort}`,
        featurestoreAddress: `127.0.0.1:${featurestorePort}`,
        bus,
        logger: logger.child({ component: 'simulator' }),
        ratePerSecond: config.simulatedRate,
        adminToken: config.assignment.platform.adminToken,
      });
    }
  });
}

main().catch((error: unknown) => {
  exitBeforeStartup('dev', error);
});
