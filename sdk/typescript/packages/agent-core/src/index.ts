/**
 * `@skialith/agent-core`: durable, resumable agent state over the Skialith sidecar's HTTP API
 * (`skialith serve`). No runtime dependencies: Node >= 20's global `fetch`.
 */

export {
  type AgentState,
  type CheckpointResult,
  type EventResult,
  type HistoryOptions,
  type HistoryRecord,
  type JsonValue,
  type SkialithAgentOptions,
  SkialithAgent,
  type WriteOptions,
} from "./agent.js";
export {
  type ClientOptions,
  DEFAULT_MAX_RETRIES,
  DEFAULT_PORT,
  DEFAULT_TIMEOUT,
  DEFAULT_URL,
  type RequestOptions,
  SkialithClient,
  newIdempotencyKey,
  segment,
} from "./client.js";
export {
  APIError,
  BadRequestError,
  ConflictError,
  ConnectionError,
  InternalServerError,
  InvalidRequestError,
  NotFoundError,
  PayloadTooLargeError,
  RequestTimeoutError,
  SkialithError,
  UnauthorizedError,
  UnavailableError,
} from "./errors.js";
