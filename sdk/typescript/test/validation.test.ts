/**
 * The official LangGraph.js checkpointer validation suite (`@langchain/langgraph-checkpoint-validation`),
 * run by vitest against SkialithSaver on a real sidecar.
 */

import type { RunnableConfig } from "@langchain/core/runnables";
import type { ChannelVersions, Checkpoint, CheckpointMetadata } from "@langchain/langgraph-checkpoint";
import { validate } from "@langchain/langgraph-checkpoint-validation";
import { SkialithSaver } from "@skialith/langgraph-checkpoint";

import { type Sidecar, startSidecar } from "./support/sidecar.js";

let sidecar: Sidecar | undefined;

/** A SkialithSaver that remembers the threads it wrote, so that they can be deleted after it. */
class TrackedSaver extends SkialithSaver {
  readonly threads = new Set<string>();

  override put(
    config: RunnableConfig,
    checkpoint: Checkpoint,
    metadata: CheckpointMetadata,
    newVersions: ChannelVersions,
  ): Promise<RunnableConfig> {
    const thread = config?.configurable?.thread_id;
    if (thread !== undefined && thread !== null) this.threads.add(String(thread));
    return super.put(config, checkpoint, metadata, newVersions);
  }
}

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
    const saver = new TrackedSaver({ url: sidecar!.url });
    await saver.setup();
    return saver;
  },
  // one sidecar serves the whole suite: what a checkpointer wrote is deleted after it, so that the
  // next one starts on an empty store, as the suite asks (its list tests read every thread)
  async destroyCheckpointer(saver: TrackedSaver) {
    for (const thread of saver.threads) await saver.deleteThread(thread);
    for await (const left of saver.list({}, { limit: 1 })) {
      throw new Error(`thread ${String(left.config.configurable?.thread_id)} was left in the store`);
    }
  },
});
