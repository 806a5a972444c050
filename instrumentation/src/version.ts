/** Instrumentation scope of every span this package emits; Tollgate marks calls in this scope `source=sdk`. */
export const PACKAGE_NAME = '@tollgate/instrumentation';
// Kept in step with package.json (checked by test/config.test.ts).
export const PACKAGE_VERSION = '0.1.0';
