/**
 * The official LangGraph.js checkpointer validation suite (`@langchain/langgraph-checkpoint-validation`),
 * run by vitest against SkialithSaver on a real sidecar.
 */

import { validate } from "@langchain/langgraph-checkpoint-validation";
import { SkialithSaver } from "@skialith/langgraph-checkpoint";

import { type Sidecar, startSidecar } from "./support/sidecar.js";

let sidecar: Sidecar | undefined;

validate({
  // the name the suite's skip lists use for savers that lack a feature: ours is in none of them
  checkpointerName: "@skialith/langgraph-checkpoint",
  beforeAllTimeout: 90_000,
  async beforeAll() {
    sidecar = await startSidecar();
  },
  async afterAll() {
    await sidecar?.stop();
  },
  async createCheckpointer() {
    const saver = new SkialithSaver({ url: sidecar!.url });
    await saver.setup();
    // one sidecar serves the whole suite: each checkpointer starts on an empty store, as the suite asks
    const threads = new Set<string>();
    for await (const tuple of saver.list({})) threads.add(String(tuple.config.configurable?.thread_id));
    for (const thread of threads) await saver.deleteThread(thread);
    return saver;
  },
});
