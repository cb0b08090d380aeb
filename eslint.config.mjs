// @ts-check
import { readdirSync } from 'node:fs';
import tseslint from 'typescript-eslint';
import importX from 'eslint-plugin-import-x';
import { createTypeScriptImportResolver } from 'eslint-import-resolver-typescript';

// Services talk only through contracts: a service may import gen/ and services/platform/, never
// another service's folder. One zone per service folder, computed so a new service is covered.
const services = readdirSync(new URL('./services', import.meta.url), { withFileTypes: true })
  .filter((entry) => entry.isDirectory())
  .map((entry) => entry.name);
const serviceZones = services.map((name) => ({
  target: `./services/${name}`,
  from: './services',
  except: name === 'platform' ? ['./platform'] : [`./${name}`, './platform'],
  message:
    'Services talk through gRPC contracts and events; import gen/ or services/platform/ only.',
}));

export default tseslint.config(
  {
    ignores: ['gen/**', 'dist/**', 'node_modules/**', 'coverage/**', '*.config.js', '*.config.mjs'],
  },
  ...tseslint.configs.strictTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    plugins: { 'import-x': importX },
    settings: {
      'import-x/resolver-next': [createTypeScriptImportResolver({ project: './tsconfig.json' })],
    },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/restrict-template-expressions': ['error', { allowNumber: true }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      'import-x/no-cycle': 'error',
      'import-x/no-restricted-paths': ['error', { zones: serviceZones }],
      'no-restricted-properties': [
        'error',
        {
          object: 'process',
          property: 'env',
          message: 'Read configuration in config.ts only (STYLE.md practice 7).',
        },
      ],
    },
  },
  {
    // Tests may use non-null assertions on values they just asserted, and read env for fixtures.
    files: ['**/test/**/*.ts', 'bench/**/*.ts'],
    rules: {
      '@typescript-eslint/no-non-null-assertion': 'off',
      'no-restricted-properties': 'off',
    },
  },
  {
    files: ['**/config.ts', '**/src/main.ts', '**/src/telemetry.ts', 'dev/main.ts'],
    rules: { 'no-restricted-properties': 'off' },
  },
);
