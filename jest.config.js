/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/services', '<rootDir>/dev'],
  testMatch: ['**/test/**/*.test.ts'],
  transform: {
    '^.+\\.ts$': [
      '@swc/jest',
      { jsc: { parser: { syntax: 'typescript' }, target: 'es2022' }, module: { type: 'commonjs' } },
    ],
  },
  // Type checking is tsc's job (`make typecheck`); swc only strips types, which keeps jest fast.
  moduleFileExtensions: ['ts', 'js', 'json'],
  testTimeout: 30_000,
  globalSetup: '<rootDir>/services/platform/test/support/global-setup.ts',
  globalTeardown: '<rootDir>/services/platform/test/support/global-teardown.ts',
};
