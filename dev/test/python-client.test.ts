/**
 * The README's "Clients in other languages", followed as a newcomer would: its `buf generate`
 * command writes Python messages and stubs (Debian's protoc and grpc_python_plugin), and
 * `dev/interop/python_client.py` calls freshly started services through them — an experiment
 * created, started, resolved and applied, a pushed feature written and read — and decodes an
 * invalid request's `google.rpc.BadRequest` from the `grpc-status-details-bin` trailer. A command
 * that generates code Python cannot import, or a contract another language cannot use, fails here.
 */
import { execFile, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startDevServices, type DevServices } from './support/services';

const run = promisify(execFile);
const ROOT = join(__dirname, '..', '..');
const SCRIPT = join(ROOT, 'dev', 'interop', 'python_client.py');
/** Debian's interpreter, which python3-grpcio and python3-protobuf install for. */
const PYTHON = '/usr/bin/python3';
const PACKAGES = 'protobuf-compiler protobuf-compiler-grpc python3-grpcio python3-protobuf';

/** What this machine lacks to generate and run the Python client. */
function missingTools(): string[] {
  const ok = (command: string, args: string[]) => spawnSync(command, args).status === 0;
  return [
    ok('protoc', ['--version']) ? [] : ['protoc'],
    ok('bash', ['-c', 'command -v grpc_python_plugin']) ? [] : ['grpc_python_plugin'],
    ok(PYTHON, ['-c', 'import grpc, google.protobuf']) ? [] : [`${PYTHON} with grpc and protobuf`],
  ].flat();
}

const missing = missingTools();
if (missing.length > 0) {
  const what = `the Python client (${missing.join(', ')} missing: install ${PACKAGES})`;
  if (process.env.TANDEM_REQUIRE_PYTHON === '1') {
    throw new Error(`${what} is required (TANDEM_REQUIRE_PYTHON=1)`);
  }
  console.log(`SKIPPED: ${what}`);
}
const describeWithPython = missing.length === 0 ? describe : describe.skip;

/** The README's command, as Markdown reads its code span (a line break is a space). */
function readmeCommand(): string {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const command = /`(npx buf generate [^`]*grpc_python_plugin[^`]*)`/.exec(readme)?.[1];
  if (!command) throw new Error('README.md: no `npx buf generate …grpc_python_plugin…` command');
  return command.replace(/\s*\n\s*/g, ' ');
}

describeWithPython('a Python client through stubs generated as the README says', () => {
  let dir: string;
  let services: DevServices | undefined;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-python-'));
    services = await startDevServices(join(dir, 'data'));
  });

  afterAll(async () => {
    await services?.shutdown();
    rmSync(dir, { recursive: true, force: true });
  });

  it('creates, starts, resolves and applies, reads features, and decodes BadRequest', async () => {
    // From the repository root, as the README says, into the temporary directory (`--output`).
    await run('bash', ['-c', `${readmeCommand()} --output '${dir}'`], { cwd: ROOT });

    const { stdout } = await run(
      PYTHON,
      [SCRIPT, `127.0.0.1:${services!.assignmentPort}`, `127.0.0.1:${services!.featurestorePort}`],
      { cwd: dir, env: { PATH: process.env.PATH, PYTHONPATH: join(dir, 'py') }, timeout: 60_000 },
    ).catch((error: unknown) => {
      const { stdout = '', stderr = '' } = error as { stdout?: string; stderr?: string };
      throw new Error(`python_client.py failed:\n${stdout}${stderr}`);
    });

    expect(stdout).toContain('started EXPERIMENT_STATUS_RUNNING\n');
    expect(stdout).toMatch(
      /^variant (control payload \{\}|treatment payload \{"button":"buy-now"\})$/m,
    );
    expect(stdout).toContain('applied logged 1\n');
    expect(stdout).toContain('error INVALID_ARGUMENT\n');
    // Every violation at once, each with its field and reason, decoded from the trailer.
    const violations = [...stdout.matchAll(/^violation (\S+ \S+)/gm)].map((m) => m[1]);
    expect(violations.sort()).toEqual([
      'experiment.variants WEIGHTS_DO_NOT_SUM_TO_ONE',
      'experiment.variants[1].key INVALID_VARIANT_KEY',
    ]);
    expect(stdout).toContain('written 1\n');
    expect(stdout).toContain('features jazz FEATURE_STATUS_PRESENT FEATURE_STATUS_NOT_FOUND\n');
  }, 120_000);
});
