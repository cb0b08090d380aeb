/**
 * The container image and the manifests that run it agree. CI has no Docker engine, so this reads
 * the files: the image's build stage copies everything the TypeScript projects it builds need,
 * the entry points the manifests run are among what it builds, and its user is one that
 * Kubernetes' `runAsNonRoot` can verify (a number: a user name makes the kubelet refuse to start
 * the container).
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';

const ROOT = resolve(__dirname, '..', '..');
const DOCKERFILE = join(ROOT, 'deploy', 'Dockerfile');

interface Stage {
  readonly lines: readonly string[];
}

/** The Dockerfile's stages, each as its instruction lines (continuations joined). */
function stages(): Stage[] {
  const text = readFileSync(DOCKERFILE, 'utf8').replace(/\\\n/g, ' ');
  const result: { lines: string[] }[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    if (/^FROM\s/i.test(line)) result.push({ lines: [] });
    result.at(-1)?.lines.push(line);
  }
  return result;
}

/** The repository paths a stage's COPY instructions take from the build context. */
function copiedFromContext(stage: Stage): string[] {
  const paths: string[] = [];
  for (const line of stage.lines) {
    const match = /^COPY\s+(.*)$/i.exec(line);
    if (!match?.[1] || /--from=/.test(match[1])) continue;
    const args = match[1].split(/\s+/).filter((arg) => !arg.startsWith('--'));
    paths.push(...args.slice(0, -1).map((path) => path.replace(/\/$/, '')));
  }
  return paths;
}

/** The projects the build stage's `tsc -b` builds (the root project when it names none). */
function builtProjects(stage: Stage): string[] {
  for (const line of stage.lines) {
    const match = /\btsc\s+-b\b([^&;|]*)/.exec(line);
    if (!match) continue;
    const projects = (match[1] ?? '')
      .split(/\s+/)
      .filter((arg) => arg !== '' && !arg.startsWith('-'));
    return projects.length > 0 ? projects : ['.'];
  }
  throw new Error('the build stage runs no `tsc -b`');
}

interface Project {
  /** The project's directory, relative to the repository. */
  readonly dir: string;
  readonly rootDir: string;
  readonly outDir: string | undefined;
  /** Files the project's configuration reads: its tsconfig.json and what it extends. */
  readonly configFiles: readonly string[];
  readonly references: readonly string[];
}

function readProject(dir: string): Project {
  const configPath = join(ROOT, dir, 'tsconfig.json');
  const configFiles = [relative(ROOT, configPath)];
  const read = ts.readConfigFile(configPath, (path) => ts.sys.readFile(path));
  if (read.error) throw new Error(`cannot read ${configPath}`);
  const config = read.config as {
    extends?: string;
    references?: { path: string }[];
  };
  if (config.extends)
    configFiles.push(relative(ROOT, resolve(dirname(configPath), config.extends)));
  const parsed = ts.parseJsonConfigFileContent(read.config, ts.sys, dirname(configPath));
  return {
    dir,
    rootDir: relative(ROOT, parsed.options.rootDir ?? dirname(configPath)),
    outDir: parsed.options.outDir === undefined ? undefined : relative(ROOT, parsed.options.outDir),
    configFiles,
    references: (config.references ?? []).map((r) => relative(ROOT, resolve(ROOT, dir, r.path))),
  };
}

/** `projects` and every project they reference, transitively. */
function withReferences(projects: readonly string[]): Project[] {
  const seen = new Map<string, Project>();
  const visit = (dir: string): void => {
    const key = relative(ROOT, resolve(ROOT, dir)) || '.';
    if (seen.has(key)) return;
    const project = readProject(key);
    seen.set(key, project);
    project.references.forEach(visit);
  };
  projects.forEach(visit);
  return [...seen.values()];
}

function isCovered(path: string, copied: readonly string[]): boolean {
  return copied.some(
    (source) => source === '.' || path === source || path.startsWith(`${source}/`),
  );
}

/** The compiled entry points (`dist/….js`) the deployment manifests run. */
function manifestEntryPoints(): string[] {
  const files = [
    join(ROOT, 'deploy', 'compose.yaml'),
    ...readdirSync(join(ROOT, 'deploy', 'k8s'))
      .filter((name) => name.endsWith('.yaml'))
      .map((name) => join(ROOT, 'deploy', 'k8s', name)),
  ];
  const entries = new Set<string>();
  for (const file of files) {
    for (const match of readFileSync(file, 'utf8').matchAll(/\bdist\/[\w./-]+\.js\b/g)) {
      entries.add(match[0]);
    }
  }
  return [...entries];
}

describe('deploy/Dockerfile', () => {
  const [build, runtime] = [stages().at(0), stages().at(-1)];

  it('has a build stage and a runtime stage', () => {
    expect(stages().length).toBeGreaterThanOrEqual(2);
  });

  it('copies every file the projects it builds read', () => {
    if (!build) throw new Error('no build stage');
    const copied = copiedFromContext(build);
    const missing: string[] = [];
    for (const project of withReferences(builtProjects(build))) {
      for (const path of [...project.configFiles, project.dir]) {
        if (path !== '.' && !isCovered(path, copied)) missing.push(path);
      }
    }
    expect(missing).toEqual([]);
  });

  it('builds every entry point the manifests run', () => {
    if (!build) throw new Error('no build stage');
    const projects = withReferences(builtProjects(build));
    const entries = manifestEntryPoints();
    expect(entries.length).toBeGreaterThan(0);
    const unbuilt = entries.filter(
      (entry) =>
        !projects.some((project) => {
          if (project.outDir === undefined || !entry.startsWith(`${project.outDir}/`)) return false;
          const source = join(project.rootDir, entry.slice(project.outDir.length + 1));
          return existsSync(join(ROOT, source.replace(/\.js$/, '.ts')));
        }),
    );
    expect(unbuilt).toEqual([]);
  });

  it('runs as a numeric non-root user, which runAsNonRoot can verify', () => {
    const user = runtime?.lines
      .map((line) => /^USER\s+(\S+)/i.exec(line)?.[1])
      .filter((value) => value !== undefined)
      .at(-1);
    expect(user).toMatch(/^\d+(:\d+)?$/);
    expect(Number(user?.split(':')[0])).toBeGreaterThan(0);
  });
});
