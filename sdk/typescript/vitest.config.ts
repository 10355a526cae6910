import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    // the official checkpointer validation suite calls describe/it/expect as globals
    globals: true,
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/support/global.ts"],
    testTimeout: 30_000,
    hookTimeout: 90_000,
    // the validation suite and the fault tests start sidecars of their own (NATS + SQLite + projector)
    maxWorkers: 2,
  },
});
