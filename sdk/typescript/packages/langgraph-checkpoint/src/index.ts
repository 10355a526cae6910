/**
 * `@skialith/langgraph-checkpoint`: a LangGraph.js checkpointer that stores checkpoints through the
 * Skialith sidecar (`skialith serve`): NATS JetStream first (a put resolves after the PubAck), the
 * SQL read model second, read-your-writes.
 *
 * Values are serialized here by the saver's serde (`serde.dumpsTyped`) and travel base64; the sidecar
 * stores them as they are and never decodes them. Checkpoint fields and metadata travel as JSON.
 */

import type { RunnableConfig } from "@langchain/core/runnables";
import {
  BaseCheckpointSaver,
  type ChannelVersions,
  type Checkpoint,
  type CheckpointListOptions,
  type CheckpointMetadata,
  type CheckpointPendingWrite,
  type CheckpointTuple,
  type PendingWrite,
  type SerializerProtocol,
  TASKS,
  maxChannelVersion,
} from "@langchain/langgraph-checkpoint";
import { type ClientOptions, SkialithClient, SkialithError } from "@skialith/agent-core";

/** A value serialized by the serde, as it travels: the serde's type name and the bytes in base64. */
interface Typed {
  type: string;
  data: string;
}

interface Configurable {
  thread_id: string;
  checkpoint_ns: string;
  checkpoint_id?: string;
}

/** A checkpoint tuple as the sidecar sends it. */
interface TupleJson {
  config: { configurable: Configurable };
  checkpoint: Omit<Checkpoint, "channel_values"> & { channel_values: Record<string, Typed> };
  metadata: CheckpointMetadata;
  parentConfig?: { configurable: Configurable } | null;
  pendingWrites: [string, string, Typed][];
}

/** Options of {@link SkialithSaver}: where the sidecar is, and the serde. */
export interface SkialithSaverOptions extends ClientOptions {
  /** The serializer of channel values and writes; default LangGraph.js's `JsonPlusSerializer`. */
  serde?: SerializerProtocol | undefined;
  /**
   * Checkpoints per request of {@link SkialithSaver.list} (1..1000, default 100): a list over a
   * long thread streams page by page instead of arriving in one response.
   */
  pageSize?: number | undefined;
}

/** The sidecar's largest page of `POST /v1/checkpoints/search`. */
export const MAX_PAGE_SIZE = 1000;
const DEFAULT_PAGE_SIZE = 100;

function toBase64(bytes: Uint8Array | string): string {
  return (typeof bytes === "string" ? Buffer.from(bytes, "utf8") : Buffer.from(bytes)).toString("base64");
}

function fromBase64(data: string): Uint8Array {
  return new Uint8Array(Buffer.from(data, "base64"));
}

function threadId(config: RunnableConfig, method: string): string {
  const value = config?.configurable?.thread_id;
  if (value === undefined || value === null || value === "") {
    throw new SkialithError(
      `${method}: config.configurable.thread_id is required (pass { configurable: { thread_id } })`,
    );
  }
  return String(value);
}

/**
 * A LangGraph.js checkpointer on Skialith.
 *
 * @example
 * ```ts
 * import { SkialithSaver } from "@skialith/langgraph-checkpoint";
 * const checkpointer = new SkialithSaver({ url: "http://127.0.0.1:8322" });
 * await checkpointer.setup();
 * const app = graph.compile({ checkpointer });
 * await app.invoke(input, { configurable: { thread_id: "t-1" } });
 * ```
 */
export class SkialithSaver extends BaseCheckpointSaver {
  readonly client: SkialithClient;
  readonly pageSize: number;

  constructor(options: SkialithSaverOptions = {}) {
    super(options.serde);
    const { pageSize = DEFAULT_PAGE_SIZE, ...clientOptions } = options;
    if (!Number.isInteger(pageSize) || pageSize < 1 || pageSize > MAX_PAGE_SIZE) {
      throw new SkialithError(`pageSize must be an integer from 1 to ${MAX_PAGE_SIZE}, got ${String(pageSize)}`);
    }
    this.pageSize = pageSize;
    this.client = new SkialithClient(clientOptions);
  }

  /** A saver for the sidecar at `url`. */
  static fromUrl(url: string, options: Omit<SkialithSaverOptions, "url"> = {}): SkialithSaver {
    return new SkialithSaver({ ...options, url });
  }

  /**
   * Check that the sidecar answers and is ready (NATS and the read model reachable). Optional: the
   * sidecar creates the stream and tables itself; calling it makes a wrong url fail at start-up.
   */
  async setup(): Promise<void> {
    await this.client.request("GET", "/readyz", { what: "setup of SkialithSaver" });
  }

  override async getTuple(config: RunnableConfig): Promise<CheckpointTuple | undefined> {
    const conf = config?.configurable;
    if (conf?.thread_id === undefined || conf.thread_id === null) return undefined;
    const found = await this.client.request<TupleJson | undefined>("GET", "/v1/checkpoints/tuple", {
      query: {
        thread_id: String(conf.thread_id),
        checkpoint_ns: conf.checkpoint_ns ?? "",
        checkpoint_id: conf.checkpoint_id || undefined,
      },
      allow: [404],
      what: "getTuple",
    });
    return found === undefined ? undefined : this.#decode(found);
  }

  override async *list(config: RunnableConfig, options: CheckpointListOptions = {}): AsyncGenerator<CheckpointTuple> {
    const conf = config?.configurable ?? {};
    const { limit, before, filter } = options;
    const query = {
      config: {
        configurable: {
          thread_id: conf.thread_id === undefined || conf.thread_id === null ? undefined : String(conf.thread_id),
          checkpoint_ns: conf.checkpoint_ns,
          checkpoint_id: conf.checkpoint_id || undefined,
        },
      },
      filter,
      before: before?.configurable?.checkpoint_id
        ? { configurable: { checkpoint_id: before.configurable.checkpoint_id } }
        : undefined,
    };
    // a page at a time (the sidecar's nextCursor), the next one asked for when this one is consumed
    let left = limit === undefined || limit === null ? Infinity : Math.max(0, Math.floor(limit));
    let cursor: string | null = null;
    while (left > 0) {
      const page: { items: TupleJson[]; nextCursor: string | null } = await this.client.request(
        "POST",
        "/v1/checkpoints/search",
        { body: { ...query, limit: Math.min(left, this.pageSize), cursor: cursor ?? undefined }, retry: true, what: "list" },
      );
      for (const item of page.items) yield await this.#decode(item);
      left -= page.items.length;
      cursor = page.nextCursor;
      if (cursor === null || page.items.length === 0) return;
    }
  }

  override async put(
    config: RunnableConfig,
    checkpoint: Checkpoint,
    metadata: CheckpointMetadata,
    newVersions: ChannelVersions,
  ): Promise<RunnableConfig> {
    if (config?.configurable === undefined) {
      throw new SkialithError("put: config.configurable is missing (pass { configurable: { thread_id } })");
    }
    const thread_id = threadId(config, "put");
    const configurable: Configurable = { thread_id, checkpoint_ns: config.configurable.checkpoint_ns ?? "" };
    if (config.configurable.checkpoint_id) configurable.checkpoint_id = config.configurable.checkpoint_id;
    // only the channels that changed travel: the others are read back from the checkpoint that stored their version
    const values: Record<string, Typed> = {};
    for (const channel of Object.keys(newVersions)) {
      if (channel in checkpoint.channel_values) {
        values[channel] = await this.#dump(checkpoint.channel_values[channel as keyof typeof checkpoint.channel_values]);
      }
    }
    const answer = await this.client.request<{ config: RunnableConfig }>("POST", "/v1/checkpoints", {
      body: { config: { configurable }, checkpoint: { ...checkpoint, channel_values: values }, metadata, newVersions },
      retry: true, // an upsert by (thread, namespace, checkpoint id)
      what: `put of checkpoint ${JSON.stringify(checkpoint.id)} in thread ${JSON.stringify(thread_id)}`,
    });
    return answer.config;
  }

  override async putWrites(config: RunnableConfig, writes: PendingWrite[], taskId: string, taskPath = ""): Promise<void> {
    const thread_id = threadId(config, "putWrites");
    const checkpoint_id = config.configurable?.checkpoint_id;
    if (!checkpoint_id) {
      throw new SkialithError("putWrites: config.configurable.checkpoint_id is required (the config put returned)");
    }
    const encoded = [];
    for (const [channel, value] of writes) encoded.push({ channel, ...(await this.#dump(value)) });
    await this.client.request("POST", "/v1/writes", {
      body: {
        config: { configurable: { thread_id, checkpoint_ns: config.configurable?.checkpoint_ns ?? "", checkpoint_id } },
        writes: encoded,
        taskId,
        taskPath,
      },
      retry: true, // an upsert by (checkpoint, task, index)
      what: `putWrites of task ${JSON.stringify(taskId)} in thread ${JSON.stringify(thread_id)}`,
    });
  }

  override async deleteThread(threadId: string): Promise<void> {
    await this.client.request("DELETE", "/v1/checkpoints", {
      query: { thread_id: String(threadId) },
      retry: true,
      what: `deleteThread ${JSON.stringify(threadId)}`,
    });
  }

  async #dump(value: unknown): Promise<Typed> {
    const [type, bytes] = await this.serde.dumpsTyped(value);
    return { type, data: toBase64(bytes) };
  }

  async #load(value: Typed): Promise<unknown> {
    return this.serde.loadsTyped(value.type, fromBase64(value.data));
  }

  async #decode(t: TupleJson): Promise<CheckpointTuple> {
    const channel_values: Record<string, unknown> = {};
    for (const [channel, value] of Object.entries(t.checkpoint.channel_values)) {
      channel_values[channel] = await this.#load(value);
    }
    const checkpoint = { ...t.checkpoint, channel_values } as Checkpoint;
    const pendingWrites: CheckpointPendingWrite[] = [];
    for (const [task, channel, value] of t.pendingWrites) pendingWrites.push([task, channel, await this.#load(value)]);
    const tuple: CheckpointTuple = { config: t.config, checkpoint, metadata: t.metadata, pendingWrites };
    if (t.parentConfig) {
      tuple.parentConfig = t.parentConfig;
      if (checkpoint.v < 4) await this.#migratePendingSends(checkpoint, t.parentConfig);
    }
    return tuple;
  }

  /** Checkpoints older than format 4 kept sends as the parent's TASKS writes: move them into the channel. */
  async #migratePendingSends(checkpoint: Checkpoint, parentConfig: RunnableConfig): Promise<void> {
    const parent = await this.getTuple(parentConfig);
    const sends = (parent?.pendingWrites ?? []).filter(([, channel]) => channel === TASKS).map(([, , value]) => value);
    (checkpoint.channel_values as Record<string, unknown>)[TASKS] = sends;
    const versions = Object.values(checkpoint.channel_versions);
    (checkpoint.channel_versions as Record<string, number | string>)[TASKS] =
      versions.length > 0 ? maxChannelVersion(...versions) : this.getNextVersion(undefined);
  }
}
