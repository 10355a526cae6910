/** SkialithAgent against a real sidecar: resume, checkpoint, saveEvent, history, errors, retries. */

import { createServer as createHttpServer } from "node:http";
import { createServer, type Server } from "node:net";
import type { AddressInfo } from "node:net";

import {
  BadRequestError,
  ConnectionError,
  InvalidRequestError,
  RequestTimeoutError,
  SkialithAgent,
  SkialithError,
} from "@skialith/agent-core";

import { sharedSidecar } from "./support/sidecar.js";

const sidecar = sharedSidecar();
let n = 0;
const agentId = (base = "agent") => `${base}-${process.pid}-${++n}`;


const JSON_VALUES = {
  text: "naïve — ✓ 𝄞",
  int: 42,
  negative: -7,
  float: 3.25,
  big: 2 ** 53 - 1,
  yes: true,
  no: false,
  nothing: null,
  list: [1, "two", [3], { four: 4 }],
  nested: { a: { b: { c: [] } }, empty: {} },
};

describe("SkialithAgent", () => {
  it("resumes a fresh agent at step 0 with empty data", async () => {
    const agent = new SkialithAgent({ agentId: agentId(), url: sidecar.url });
    const state = await agent.resume();
    expect(state).toMatchObject({ stepIndex: 0, data: {}, lastStep: null, resumed: false, checkpointedAt: null });
    expect(agent.step).toBe(0);
  });

  it("resumes the last checkpoint's data, JSON values unchanged", async () => {
    const id = agentId();
    const writer = new SkialithAgent({ agentId: id, url: sidecar.url });
    const first = await writer.checkpoint(0, { done: 0 });
    const second = await writer.checkpoint(1, JSON_VALUES);
    expect(first).toMatchObject({ agentId: id, step: 0 });
    expect(second.seq).toBeGreaterThan(first.seq);
    expect(writer.step).toBe(2);

    const state = await new SkialithAgent({ agentId: id, url: sidecar.url }).resume();
    expect(state).toMatchObject({ agentId: id, stepIndex: 2, lastStep: 1, resumed: true });
    expect(state.data).toEqual(JSON_VALUES);
    expect(typeof state.checkpointedAt).toBe("number");
  });

  it("checkpointing a step again replaces its data (one record per step)", async () => {
    const id = agentId();
    const agent = new SkialithAgent({ agentId: id, url: sidecar.url });
    await agent.checkpoint(0, { attempt: 1 });
    await agent.checkpoint(0, { attempt: 2 });
    expect((await agent.resume()).data).toEqual({ attempt: 2 });
    const records = await agent.history({ kind: "checkpoint" });
    expect(records.map((r) => [r.step, r.payload])).toEqual([[0, { attempt: 2 }]]);
  });

  it("saves events under the current step and lists the history in log order", async () => {
    const id = agentId();
    const agent = new SkialithAgent({ agentId: id, url: sidecar.url });
    await agent.resume();
    const e0 = await agent.saveEvent("plan", { kind: "thought", text: "first" });
    await agent.checkpoint(0, { messages: ["hi"] });
    const e1 = await agent.saveEvent("tool", { kind: "tool", name: "search" });
    const e2 = await agent.saveEvent("late", [1, 2], { step: 7 });
    expect([e0.step, e1.step, e2.step]).toEqual([0, 1, 7]);

    const all = await agent.history();
    expect(all.map((r) => [r.kind, r.step, r.name])).toEqual([
      ["event", 0, "plan"],
      ["checkpoint", 0, ""],
      ["event", 1, "tool"],
      ["event", 7, "late"],
    ]);
    expect(all.map((r) => r.seq)).toEqual([...all.map((r) => r.seq)].sort((a, b) => a - b));
    expect((await agent.history({ kind: "event" })).map((r) => r.name)).toEqual(["plan", "tool", "late"]);
    expect((await agent.history({ step: 0 })).map((r) => r.kind)).toEqual(["event", "checkpoint"]);
  });

  it("an event before any resume or checkpoint goes to the step after the stored checkpoints", async () => {
    const id = agentId();
    await new SkialithAgent({ agentId: id, url: sidecar.url }).checkpoint(4, {});
    const fresh = new SkialithAgent({ agentId: id, url: sidecar.url });
    expect(fresh.step).toBeUndefined();
    expect((await fresh.saveEvent("x", 1)).step).toBe(5);
  });

  it.each(["a/b", "with space", "ünï©ødé", "*", ">", "a.b.c", "%2F", "?q=1#f"])(
    "keeps the agent id %j exactly",
    async (raw) => {
      const id = `${raw}-${agentId()}`;
      const agent = new SkialithAgent({ agentId: id, url: sidecar.url });
      await agent.checkpoint(0, { id });
      const state = await new SkialithAgent({ agentId: id, url: sidecar.url }).resume();
      expect(state).toMatchObject({ agentId: id, data: { id }, stepIndex: 1 });
      expect((await agent.history()).map((r) => r.agentId)).toEqual([id]);
    },
  );
});

describe("errors", () => {
  it("refuses what cannot be sent before sending anything", async () => {
    expect(() => new SkialithAgent({ agentId: "", url: sidecar.url })).toThrow(SkialithError);
    expect(() => new SkialithAgent({ agentId: "..", url: sidecar.url })).toThrow(/dot segment/);
    const agent = new SkialithAgent({ agentId: agentId(), url: sidecar.url });
    await expect(agent.checkpoint(-1, {})).rejects.toThrow(/step must be an integer >= 0, got -1/);
    await expect(agent.checkpoint(1.5, {})).rejects.toThrow(SkialithError);
    await expect(agent.saveEvent("", {})).rejects.toThrow(/non-empty/);
    expect(() => new SkialithAgent({ agentId: "a", url: "not a url" })).toThrow(/is not a URL/);
  });

  it("turns the sidecar's 4xx into typed errors that say what to do, and writes nothing", async () => {
    const id = agentId();
    const agent = new SkialithAgent({ agentId: id, url: sidecar.url });
    const error = await agent.saveEvent("n".repeat(300), {}).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SkialithError);
    expect(error).toSatisfy((e) => e instanceof BadRequestError || e instanceof InvalidRequestError);
    expect((error as InvalidRequestError).status).toBeGreaterThanOrEqual(400);
    expect((error as Error).message).toMatch(/event .* of agent .*: .*\(fix the arguments of the call; nothing was written\)/);
    expect(await agent.history()).toEqual([]);
  });

  it("a sidecar that is not running: ConnectionError naming the url and how to start it", async () => {
    const port = await closedPort();
    const agent = new SkialithAgent({ agentId: "a", url: `http://127.0.0.1:${port}`, maxRetries: 1 });
    const error = await agent.resume().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConnectionError);
    expect((error as Error).message).toContain(`http://127.0.0.1:${port}`);
    expect((error as Error).message).toMatch(/skialith serve.*after 2 attempts/);
  });

  it("a url that is not a sidecar: the error says to check the url", async () => {
    const web = await listen(
      createHttpServer((_, res) => res.writeHead(200, { "content-type": "text/html" }).end("<html></html>")) as unknown as Server,
    );
    try {
      const port = (web.address() as AddressInfo).port;
      const agent = new SkialithAgent({ agentId: "a", url: `http://127.0.0.1:${port}` });
      await expect(agent.resume()).rejects.toThrow(/without a JSON body; check that the url points at a Skialith sidecar/);
    } finally {
      web.close();
    }
  });

  it("a sidecar that does not answer: RequestTimeoutError after the timeout", async () => {
    const silent = await listen(createServer(() => {}));
    try {
      const port = (silent.address() as AddressInfo).port;
      const agent = new SkialithAgent({ agentId: "a", url: `http://127.0.0.1:${port}`, timeout: 200, maxRetries: 0 });
      const started = Date.now();
      await expect(agent.resume()).rejects.toThrow(RequestTimeoutError);
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      silent.close();
    }
  });
});

describe("retries", () => {
  it("a write whose answer is lost is retried with the same Idempotency-Key and stored once", async () => {
    const keys: string[] = [];
    let firstAnswer: { seq: number } | undefined;
    const losing: typeof fetch = async (input, init) => {
      keys.push(new Headers(init?.headers).get("idempotency-key") ?? "");
      const response = await fetch(input, init);
      if (firstAnswer === undefined) {
        firstAnswer = (await response.json()) as { seq: number };
        throw new TypeError("fetch failed", { cause: { code: "ECONNRESET" } });
      }
      return response;
    };
    const id = agentId();
    const agent = new SkialithAgent({ agentId: id, url: sidecar.url, fetch: losing });
    const result = await agent.checkpoint(0, { v: 1 });
    expect(keys).toHaveLength(2);
    expect(keys[0]).toMatch(/^[0-9a-f-]{36}$/);
    expect(keys[1]).toBe(keys[0]);
    // the retry got the first write's answer: nothing new was written
    expect(result.seq).toBe(firstAnswer!.seq);
    const records = await new SkialithAgent({ agentId: id, url: sidecar.url }).history();
    expect(records.map((r) => r.seq)).toEqual([firstAnswer!.seq]);
  });

  it("each call has a key of its own; a reused key with another body is a ConflictError", async () => {
    const agent = new SkialithAgent({ agentId: agentId(), url: sidecar.url });
    await agent.saveEvent("a", 1, { idempotencyKey: "k-1" });
    const again = await agent.saveEvent("a", 1, { idempotencyKey: "k-1" });
    expect(again.name).toBe("a");
    await expect(agent.saveEvent("a", 2, { idempotencyKey: "k-1" })).rejects.toMatchObject({
      name: "ConflictError",
      status: 409,
    });
  });
});

function listen(server: Server): Promise<Server> {
  return new Promise((done) => server.listen(0, "127.0.0.1", () => done(server)));
}

async function closedPort(): Promise<number> {
  const server = await listen(createServer());
  const port = (server.address() as AddressInfo).port;
  await new Promise((done) => server.close(done));
  return port;
}
