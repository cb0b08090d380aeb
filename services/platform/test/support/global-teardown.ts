/** Stops the nats-server that global-setup started, if it started one. */
export default function globalTeardown(): void {
  const pid = Number(process.env.TANDEM_TEST_NATS_PID);
  if (pid > 0) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // already gone
    }
  }
}
