export { type ApiDeps, buildApi, type ReadinessCheck } from './app.js';
