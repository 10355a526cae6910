/**
 * SkialithAgent: durable, resumable state for plain async agents, over the sidecar's HTTP API.
 *
 * The same semantics as the Python `SkialithAgent`: a checkpoint is keyed by `(agentId, step)`, an
 * event by `(agentId, step, name)`; each write returns once NATS JetStream acknowledged it; data is
 * JSON and reads back identically from Python and TypeScript.
 */

import { type ClientOptions, SkialithClient, newIdempotencyKey, segment } from "./client.js";
import { SkialithError } from "./errors.js";

/** JSON data an agent checkpoints or saves. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** Options of {@link SkialithAgent}: the agent's id and how to reach the sidecar. */
export interface SkialithAgentOptions extends ClientOptions {
  /** The agent's id: any non-empty string (at most 255 characters) but `.` and `..`. */
  agentId: string;
}

/** What {@link SkialithAgent.resume} found. */
export interface AgentState<T = any> {
  agentId: string;
  /** The next step to run: the highest checkpointed step + 1, or 0 for a fresh agent. */
  stepIndex: number;
  /** The data of the highest checkpointed step, or `{}` for a fresh agent. */
  data: T;
  /** The highest checkpointed step, or `null` for a fresh agent. */
  lastStep: number | null;
  /** When that checkpoint was saved (seconds since the epoch), or `null`. */
  checkpointedAt: number | null;
  /** Whether a checkpoint was found. */
  resumed: boolean;
}

/** The answer to a checkpoint. */
export interface CheckpointResult {
  agentId: string;
  step: number;
  /** The JetStream sequence of the stored message. */
  seq: number;
}

/** The answer to an event. */
export interface EventResult {
  agentId: string;
  name: string;
  step: number;
  seq: number;
}

/** One checkpoint or event of the agent's history. */
export interface HistoryRecord<T = any> {
  agentId: string;
  kind: "checkpoint" | "event";
  step: number;
  /** The event's name; `""` for a checkpoint. */
  name: string;
  payload: T;
  /** When it was saved (seconds since the epoch). */
  ts: number;
  seq: number;
}

/** Which records {@link SkialithAgent.history} returns. */
export interface HistoryOptions {
  kind?: "checkpoint" | "event" | undefined;
  step?: number | undefined;
}

/** Options of one write. */
export interface WriteOptions {
  /** The key that makes the write's retries safe; default a new UUID per call (reused by its retries). */
  idempotencyKey?: string | undefined;
}

function checkStep(step: unknown, field = "step"): number {
  if (typeof step !== "number" || !Number.isSafeInteger(step) || step < 0) {
    throw new SkialithError(`${field} must be an integer >= 0, got ${JSON.stringify(step) ?? String(step)}`);
  }
  return step;
}

/**
 * An agent's durable state on Skialith.
 *
 * @example
 * ```ts
 * const agent = new SkialithAgent({ agentId: "my-agent" });
 * const state = await agent.resume();
 * await agent.checkpoint(state.stepIndex, { messages });
 * await agent.saveEvent("step-1", { kind: "thought", text: "..." });
 * ```
 */
export class SkialithAgent {
  readonly agentId: string;
  readonly client: SkialithClient;
  #step: number | undefined = undefined;
  readonly #path: string;

  constructor(options: SkialithAgentOptions) {
    if (options === null || typeof options !== "object") {
      throw new SkialithError('pass the options object: new SkialithAgent({ agentId: "my-agent" })');
    }
    this.#path = `/v1/agents/${segment(options.agentId, "agentId")}`;
    this.agentId = options.agentId;
    this.client = new SkialithClient(options);
  }

  /**
   * The step events are saved under by default: the `stepIndex` of the last `resume()`, or the step
   * after this object's last checkpoint; `undefined` before either (the sidecar then uses the step
   * after the agent's last stored checkpoint).
   */
  get step(): number | undefined {
    return this.#step;
  }

  /** The last checkpoint's data and the step to run next (`stepIndex`); sets {@link step} to it. */
  async resume<T = any>(): Promise<AgentState<T>> {
    const state = await this.client.request<AgentState<T>>("GET", `${this.#path}/state`, {
      what: `resume of agent ${JSON.stringify(this.agentId)}`,
    });
    this.#step = state.stepIndex;
    return state;
  }

  /**
   * Save the agent's state after `step`; resolves once JetStream acknowledged it. Checkpointing a
   * step again replaces its data. Sets {@link step} to `step + 1`.
   */
  async checkpoint(step: number, data: unknown, options: WriteOptions = {}): Promise<CheckpointResult> {
    checkStep(step);
    const result = await this.client.request<CheckpointResult>("POST", `${this.#path}/checkpoints`, {
      body: { step, data },
      idempotencyKey: options.idempotencyKey ?? newIdempotencyKey(),
      what: `checkpoint of agent ${JSON.stringify(this.agentId)} at step ${step}`,
    });
    this.#step = step + 1;
    return result;
  }

  /**
   * Record an event of the current step ({@link step}, or `options.step`); resolves once JetStream
   * acknowledged it. Saving the same name again in the same step replaces the event. Resolves to
   * the step it was saved under.
   */
  async saveEvent(
    name: string,
    payload: unknown,
    options: WriteOptions & { step?: number | undefined } = {},
  ): Promise<EventResult> {
    if (typeof name !== "string" || name === "") {
      throw new SkialithError(`an event name must be a non-empty string, got ${JSON.stringify(name)}`);
    }
    const step = options.step === undefined ? this.#step : checkStep(options.step);
    return this.client.request<EventResult>("POST", `${this.#path}/events`, {
      body: { name, payload, step },
      idempotencyKey: options.idempotencyKey ?? newIdempotencyKey(),
      what: `event ${JSON.stringify(name)} of agent ${JSON.stringify(this.agentId)}`,
    });
  }

  /** The agent's checkpoints and events in log order (optionally of one kind or one step). */
  async history<T = any>(options: HistoryOptions = {}): Promise<HistoryRecord<T>[]> {
    const query = {
      kind: options.kind,
      step: options.step === undefined ? undefined : checkStep(options.step),
    };
    const page = await this.client.request<{ records: HistoryRecord<T>[] }>("GET", `${this.#path}/history`, {
      query,
      what: `history of agent ${JSON.stringify(this.agentId)}`,
    });
    return page.records;
  }
}
