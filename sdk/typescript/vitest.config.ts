import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    // the official checkpointer validation suite calls describe/it/expect as globals
    globals: true,
    include: ["test/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 90_000,
    // each test file starts its own sidecar (NATS + SQLite + projector): two at a time
    maxWorkers: 2,
  },
});
