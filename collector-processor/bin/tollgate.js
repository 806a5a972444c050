#!/usr/bin/env node
// The `tollgate` command: a checked-in entry point (npm links bins at install time, before the build
// exists) that runs the compiled CLI.
import '../dist/cli/main.js';
