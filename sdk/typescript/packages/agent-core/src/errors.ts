/**
 * Errors of the Skialith client. Every error is a {@link SkialithError}:
 *
 * - {@link ConnectionError}: the sidecar could not be reached (refused, reset, DNS) — after retries.
 * - {@link RequestTimeoutError}: no answer within the timeout — after retries.
 * - {@link APIError}: the sidecar answered with an error status; one subclass per status:
 *   {@link BadRequestError} 400, {@link UnauthorizedError} 401, {@link NotFoundError} 404,
 *   {@link ConflictError} 409, {@link PayloadTooLargeError} 413, {@link InvalidRequestError} 422,
 *   {@link UnavailableError} 503 (NATS down; after retries), {@link InternalServerError} other 5xx.
 *
 * Messages say what happened (the sidecar's own message included) and what to do.
 */

/** The base of every error this package throws. */
export class SkialithError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The sidecar could not be reached at all (connection refused or reset, unknown host). */
export class ConnectionError extends SkialithError {
  readonly url: string;
  constructor(message: string, options: { url: string; cause?: unknown }) {
    super(message, { cause: options.cause });
    this.url = options.url;
  }
}

/** The sidecar did not answer within the client's timeout. */
export class RequestTimeoutError extends ConnectionError {}

/** The body of an error answer: `{"error": {"code", "message"}}`. */
export interface ErrorBody {
  error?: { code?: string; message?: string };
}

/** The sidecar answered with an error status. */
export class APIError extends SkialithError {
  /** The HTTP status. */
  readonly status: number;
  /** The sidecar's error code (`bad_request`, `unauthorized`, ...), if it sent one. */
  readonly code: string | undefined;
  /** The decoded error body, if it was JSON. */
  readonly body: unknown;
  constructor(message: string, options: { status: number; code?: string | undefined; body?: unknown }) {
    super(message);
    this.status = options.status;
    this.code = options.code;
    this.body = options.body;
  }
}

/** 400: malformed input (bad JSON, wrong types, an id the sidecar refuses). Not retried. */
export class BadRequestError extends APIError {}
/** 401: the token is missing or wrong. */
export class UnauthorizedError extends APIError {}
/** 404: no such thing (an unknown path: check the url points at a Skialith sidecar). */
export class NotFoundError extends APIError {}
/** 409: the same Idempotency-Key was used with another body. */
export class ConflictError extends APIError {}
/** 413: the body is over the sidecar's limit (the message names it). */
export class PayloadTooLargeError extends APIError {}
/** 422: the body does not match the API's schema. */
export class InvalidRequestError extends APIError {}
/** 503: the sidecar cannot reach NATS JetStream (the write may or may not be stored). Retried before it is thrown. */
export class UnavailableError extends APIError {}
/** Any other 5xx. */
export class InternalServerError extends APIError {}

const HINTS: Record<number, string> = {
  400: "fix the arguments of the call; nothing was written",
  401:
    "pass the sidecar's token as `new SkialithAgent({ token })` or set SKIALITH_API_TOKEN " +
    "(the server's SKIALITH_API_TOKEN or --token)",
  404: "check that the url points at a Skialith sidecar (`skialith serve`) of a matching version",
  409: "an Idempotency-Key is reused only to retry the very same request; use a new key for new data",
  413: "send less data per call (split it over several checkpoints or events)",
  422: "fix the arguments of the call; nothing was written",
  503:
    "the sidecar cannot reach NATS JetStream: start it (`skialith up`) or wait until it is back, " +
    "then call again (repeating a checkpoint, an event or a put is safe: it replaces what it wrote)",
};

/** The error for an answer with status `status` and body `body`. */
export function errorFromResponse(status: number, body: unknown, what: string): APIError {
  const err = (body as ErrorBody | undefined)?.error;
  const code = typeof err?.code === "string" ? err.code : undefined;
  const said = typeof err?.message === "string" ? err.message : `HTTP ${status}`;
  const hint = HINTS[status] ?? (status >= 500 ? "see the sidecar's log; the call may be retried" : undefined);
  const message = `${what}: ${said}` + (hint ? ` (${hint})` : "");
  const options = { status, code, body };
  switch (status) {
    case 400:
      return new BadRequestError(message, options);
    case 401:
    case 403:
      return new UnauthorizedError(message, options);
    case 404:
      return new NotFoundError(message, options);
    case 409:
      return new ConflictError(message, options);
    case 413:
      return new PayloadTooLargeError(message, options);
    case 422:
      return new InvalidRequestError(message, options);
    case 503:
      return new UnavailableError(message, options);
    default:
      return status >= 500 ? new InternalServerError(message, options) : new APIError(message, options);
  }
}
