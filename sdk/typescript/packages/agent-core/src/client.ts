/**
 * The HTTP transport shared by {@link SkialithAgent} and the LangGraph.js checkpointer: JSON over
 * `fetch`, a bearer token, typed errors, and retries that are safe (reads, and writes that carry an
 * `Idempotency-Key`, the same one on every attempt).
 */

import { ConnectionError, RequestTimeoutError, SkialithError, errorFromResponse } from "./errors.js";

/** The port `skialith serve` listens on by default. */
export const DEFAULT_PORT = 8322;
/** Where the client looks for the sidecar without `url` and without `SKIALITH_URL`. */
export const DEFAULT_URL = `http://127.0.0.1:${DEFAULT_PORT}`;
/** Milliseconds one attempt may take. */
export const DEFAULT_TIMEOUT = 10_000;
/** Attempts after the first one, for calls that are safe to retry. */
export const DEFAULT_MAX_RETRIES = 3;

/** Options of {@link SkialithClient}. */
export interface ClientOptions {
  /** The sidecar's base URL; default `SKIALITH_URL`, else {@link DEFAULT_URL}. */
  url?: string | undefined;
  /** The sidecar's bearer token; default `SKIALITH_API_TOKEN` (none when unset). */
  token?: string | undefined;
  /** Milliseconds one attempt may take; default {@link DEFAULT_TIMEOUT}. */
  timeout?: number | undefined;
  /** Retries of a safe call on a network error, a timeout or a 503; default {@link DEFAULT_MAX_RETRIES}. */
  maxRetries?: number | undefined;
  /** The `fetch` to use (tests inject faults through it); default the global one. */
  fetch?: typeof fetch | undefined;
}

/** One request. */
export interface RequestOptions {
  /** Query parameters; `undefined` values are left out. */
  query?: Record<string, string | number | undefined> | undefined;
  /** A JSON body. */
  body?: unknown;
  /** For writes: the key that makes retries safe (sent as `Idempotency-Key`). Reads are always retried. */
  idempotencyKey?: string | undefined;
  /** Retry this call although it is not a GET and has no key (it is idempotent by nature). */
  retry?: boolean | undefined;
  /** What the call does, for messages ("checkpoint of agent 'a'"). */
  what: string;
  /** Statuses answered as `undefined` instead of an error (404 for "no such checkpoint"). */
  allow?: readonly number[] | undefined;
}

function env(name: string): string | undefined {
  const value = globalThis.process?.env?.[name];
  return value === undefined || value === "" ? undefined : value;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** A new idempotency key (a UUID; `crypto.randomUUID` is global in Node >= 19). */
export function newIdempotencyKey(): string {
  return globalThis.crypto.randomUUID();
}

/**
 * A path segment holding `id`: percent-encoded (a `/` in an id stays inside its segment).
 *
 * @throws {SkialithError} for the ids `.` and `..`, which a URL cannot carry as a segment (fetch
 *   removes them as dot segments, even percent-encoded).
 */
export function segment(id: string, field: string): string {
  if (typeof id !== "string" || id === "") {
    throw new SkialithError(`${field} must be a non-empty string, got ${JSON.stringify(id)}`);
  }
  if (id === "." || id === "..") {
    throw new SkialithError(
      `${field} ${JSON.stringify(id)} cannot be sent in a URL path (it is a dot segment); choose another id`,
    );
  }
  return encodeURIComponent(id);
}

/** A client of the sidecar's JSON API. */
export class SkialithClient {
  readonly url: string;
  readonly timeout: number;
  readonly maxRetries: number;
  readonly #token: string | undefined;
  readonly #fetch: typeof fetch;

  constructor(options: ClientOptions = {}) {
    const url = options.url ?? env("SKIALITH_URL") ?? DEFAULT_URL;
    try {
      new URL(url);
    } catch (cause) {
      throw new SkialithError(
        `the sidecar url ${JSON.stringify(url)} is not a URL; pass e.g. "http://127.0.0.1:${DEFAULT_PORT}"`,
        { cause },
      );
    }
    this.url = url.replace(/\/+$/, "");
    this.#token = options.token ?? env("SKIALITH_API_TOKEN");
    this.timeout = options.timeout ?? DEFAULT_TIMEOUT;
    this.maxRetries = options.maxRetries ?? DEFAULT_MAX_RETRIES;
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== "function") {
      throw new SkialithError("no global fetch: use Node >= 20, or pass { fetch }");
    }
    this.#fetch = f;
  }

  /**
   * Send one request and decode its JSON answer (`undefined` for 204 and the `allow`ed statuses).
   * Reads, and writes with an idempotency key, are retried with backoff on network errors,
   * timeouts and 503; other errors are thrown at once.
   */
  async request<T>(method: string, path: string, options: RequestOptions): Promise<T> {
    let target = `${this.url}${path}`;
    if (options.query) {
      const params = new URLSearchParams();
      for (const [k, v] of Object.entries(options.query)) if (v !== undefined) params.append(k, String(v));
      const qs = params.toString();
      if (qs) target += `?${qs}`;
    }
    const headers: Record<string, string> = { accept: "application/json" };
    let payload: string | undefined;
    if (options.body !== undefined) {
      headers["content-type"] = "application/json";
      payload = JSON.stringify(options.body);
    }
    if (this.#token !== undefined) headers["authorization"] = `Bearer ${this.#token}`;
    if (options.idempotencyKey !== undefined) headers["idempotency-key"] = options.idempotencyKey;
    const safe =
      method === "GET" || method === "HEAD" || options.idempotencyKey !== undefined || options.retry === true;
    const attempts = safe ? this.maxRetries + 1 : 1;
    let last: SkialithError | undefined;
    for (let attempt = 0; attempt < attempts; attempt++) {
      if (attempt > 0) await sleep(backoff(attempt, last));
      let response: Response;
      try {
        response = await this.#fetch(target, {
          method,
          headers,
          body: payload,
          signal: AbortSignal.timeout(this.timeout),
        });
      } catch (cause) {
        last = this.#networkError(cause, options.what, attempt + 1);
        continue;
      }
      if (response.ok) {
        if (response.status === 204) return undefined as T;
        try {
          return (await response.json()) as T;
        } catch (cause) {
          throw new SkialithError(
            `${options.what}: ${this.url} answered ${response.status} without a JSON body; ` +
              "check that the url points at a Skialith sidecar (`skialith serve`)",
            { cause },
          );
        }
      }
      if (options.allow?.includes(response.status)) {
        await response.body?.cancel();
        return undefined as T;
      }
      let body: unknown;
      try {
        body = await response.json();
      } catch {
        body = undefined;
      }
      const error = errorFromResponse(response.status, body, options.what);
      if (response.status === 503 || response.status === 429) {
        (error as RetryAfter).retryAfter = retryAfter(response.headers.get("retry-after"));
        last = error;
        continue;
      }
      throw error;
    }
    throw attempts === 1 ? last! : withAttempts(last!, attempts);
  }

  #networkError(cause: unknown, what: string, attempt: number): SkialithError {
    const timedOut = cause instanceof Error && (cause.name === "TimeoutError" || cause.name === "AbortError");
    if (timedOut) {
      return new RequestTimeoutError(
        `${what}: the sidecar at ${this.url} did not answer within ${this.timeout} ms (attempt ${attempt}); ` +
          "check that it runs and is not overloaded, or raise the timeout option",
        { url: this.url, cause },
      );
    }
    const reason = (cause as { cause?: { code?: string } })?.cause?.code ?? String(cause);
    return new ConnectionError(
      `${what}: cannot reach the Skialith sidecar at ${this.url} (${reason}, attempt ${attempt}); ` +
        "start it with `skialith serve` (or `skialith up`), or pass its address as the url option or SKIALITH_URL",
      { url: this.url, cause },
    );
  }
}

interface RetryAfter {
  retryAfter?: number | undefined;
}

function retryAfter(header: string | null): number | undefined {
  if (header === null) return undefined;
  const seconds = Number(header);
  return Number.isFinite(seconds) && seconds >= 0 ? Math.min(seconds * 1000, 5_000) : undefined;
}

/** Milliseconds before attempt `attempt` (1-based retries): exponential with full jitter, or Retry-After. */
function backoff(attempt: number, last: SkialithError | undefined): number {
  const hinted = (last as RetryAfter | undefined)?.retryAfter;
  if (hinted !== undefined) return hinted;
  const cap = Math.min(100 * 2 ** (attempt - 1), 2_000);
  return cap / 2 + Math.random() * (cap / 2);
}

function withAttempts(error: SkialithError, attempts: number): SkialithError {
  error.message = `${error.message.replace(/, attempt \d+\)/, ")")} after ${attempts} attempts`;
  return error;
}
