/**
 * Faults against a sidecar of this file's own: a token it requires, a body limit, and its NATS
 * killed (-9).
 */

import { readFileSync } from "node:fs";

import { PayloadTooLargeError, SkialithAgent, UnauthorizedError, UnavailableError } from "@skialith/agent-core";
import { SkialithSaver } from "@skialith/langgraph-checkpoint";

import { type Sidecar, startSidecar } from "./support/sidecar.js";

const TOKEN = `token-${process.pid}`;
const MAX_BODY = 65_536; // bytes
let sidecar: Sidecar;

beforeAll(async () => {
  sidecar = await startSidecar(["--token", TOKEN, "--max-body-bytes", String(MAX_BODY)]);
});
afterAll(async () => {
  await sidecar?.stop();
});

/** The pids of the children of `pid` (the devserver's nats-server). */
function children(pid: number): number[] {
  const text = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim();
  return text ? text.split(/\s+/).map(Number) : [];
}

describe("a sidecar that requires a token", () => {
  it("refuses a missing or wrong token with UnauthorizedError saying where the token goes", async () => {
    for (const token of [undefined, "wrong"]) {
      const agent = new SkialithAgent({ agentId: "a", url: sidecar.url, token });
      const error = await agent.checkpoint(0, { x: 1 }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(UnauthorizedError);
      expect((error as UnauthorizedError).status).toBe(401);
      expect((error as Error).message).toMatch(/SKIALITH_API_TOKEN/);
    }
    // nothing was written
    const agent = new SkialithAgent({ agentId: "a", url: sidecar.url, token: TOKEN });
    expect(await agent.history()).toEqual([]);
  });

  it("takes the token from the option or SKIALITH_API_TOKEN", async () => {
    await new SkialithAgent({ agentId: "b", url: sidecar.url, token: TOKEN }).checkpoint(0, { via: "option" });
    const saved = process.env.SKIALITH_API_TOKEN;
    process.env.SKIALITH_API_TOKEN = TOKEN;
    try {
      const state = await new SkialithAgent({ agentId: "b", url: sidecar.url }).resume();
      expect(state.data).toEqual({ via: "option" });
      const saver = new SkialithSaver({ url: sidecar.url });
      await saver.setup();
    } finally {
      if (saved === undefined) delete process.env.SKIALITH_API_TOKEN;
      else process.env.SKIALITH_API_TOKEN = saved;
    }
  });
});

describe("a body over the sidecar's limit", () => {
  it("is a PayloadTooLargeError naming the limit, not retried, and nothing is written", async () => {
    let calls = 0;
    const counting: typeof fetch = (input, init) => {
      calls++;
      return fetch(input, init);
    };
    const agent = new SkialithAgent({ agentId: "big", url: sidecar.url, token: TOKEN, fetch: counting });
    const error = await agent.checkpoint(0, { text: "x".repeat(MAX_BODY) }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PayloadTooLargeError);
    expect((error as Error).message).toContain(String(MAX_BODY));
    expect((error as Error).message).toMatch(/send less data per call/);
    expect(calls).toBe(1);
    expect(await agent.history()).toEqual([]);

    // the checkpointer's put too
    const saver = new SkialithSaver({ url: sidecar.url, token: TOKEN });
    const checkpoint = {
      v: 4,
      id: "1",
      ts: new Date().toISOString(),
      channel_values: { big: "x".repeat(MAX_BODY) },
      channel_versions: { big: 1 },
      versions_seen: {},
    };
    const metadata = { source: "input" as const, step: -1, parents: {} };
    await expect(
      saver.put({ configurable: { thread_id: "big" } }, checkpoint, metadata, { big: 1 }),
    ).rejects.toBeInstanceOf(PayloadTooLargeError);
    expect(await saver.getTuple({ configurable: { thread_id: "big" } })).toBeUndefined();
  });
});

describe("NATS down", () => {
  it("a write is retried under one key, then fails with UnavailableError that says what to do", async () => {
    const nats = children(Number(sidecar.info.pid));
    expect(nats.length).toBeGreaterThan(0);
    for (const pid of nats) process.kill(pid, "SIGKILL");

    const keys: string[] = [];
    const counting: typeof fetch = (input, init) => {
      keys.push(new Headers(init?.headers).get("idempotency-key") ?? "");
      return fetch(input, init);
    };
    const agent = new SkialithAgent({ agentId: "c", url: sidecar.url, token: TOKEN, fetch: counting, maxRetries: 1 });
    const error = await agent.checkpoint(0, { x: 1 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UnavailableError);
    expect((error as UnavailableError).status).toBe(503);
    expect((error as Error).message).toMatch(/no PubAck from NATS.*start it \(`skialith up`\).*call again.*after 2 attempts/);
    expect(keys).toHaveLength(2);
    expect(new Set(keys).size).toBe(1);
  });
});
