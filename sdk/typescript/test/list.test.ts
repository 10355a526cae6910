/** SkialithSaver.list over a long thread: page by page through the sidecar's nextCursor. */

import { randomUUID } from "node:crypto";

import { emptyCheckpoint } from "@langchain/langgraph-checkpoint";
import { SkialithSaver } from "@skialith/langgraph-checkpoint";
import { describe, expect, test } from "vitest";

import { sharedSidecar } from "./support/sidecar.js";

const sidecar = sharedSidecar();

/** A fetch that counts the search requests and the limit each asked for. */
function counting(): { fetch: typeof fetch; limits: number[] } {
  const limits: number[] = [];
  const counted: typeof fetch = async (input, init) => {
    if (String(input).endsWith("/v1/checkpoints/search")) {
      limits.push(JSON.parse(String(init?.body)).limit as number);
    }
    return fetch(input, init);
  };
  return { fetch: counted, limits };
}

describe("SkialithSaver.list pages", () => {
  test("a long thread streams a page per request, in order, and stops at limit", async () => {
    const thread = `paged-${randomUUID()}`;
    const writer = new SkialithSaver({ url: sidecar.url });
    const ids: string[] = [];
    let config = { configurable: { thread_id: thread, checkpoint_ns: "" } };
    for (let step = 0; step < 23; step++) {
      const checkpoint = { ...emptyCheckpoint(), id: `c-${String(step).padStart(3, "0")}` };
      config = (await writer.put(config, checkpoint, { source: "loop", step, parents: {} }, {})) as typeof config;
      ids.push(checkpoint.id);
    }
    const newestFirst = [...ids].reverse();
    const threadOnly = { configurable: { thread_id: thread } };

    const counted = counting();
    const saver = new SkialithSaver({ url: sidecar.url, pageSize: 5, fetch: counted.fetch });
    const seen: string[] = [];
    for await (const t of saver.list(threadOnly)) {
      seen.push(t.checkpoint.id);
      // the next page is asked for only when this one is used up
      expect(counted.limits.length).toBe(Math.ceil(seen.length / 5));
    }
    expect(seen).toEqual(newestFirst);
    expect(counted.limits).toEqual([5, 5, 5, 5, 5]);

    const limited = counting();
    const some = new SkialithSaver({ url: sidecar.url, pageSize: 5, fetch: limited.fetch });
    const first12: string[] = [];
    for await (const t of some.list(threadOnly, { limit: 12 })) first12.push(t.checkpoint.id);
    expect(first12).toEqual(newestFirst.slice(0, 12));
    expect(limited.limits).toEqual([5, 5, 2]);

    const before: string[] = [];
    const options = { before: { configurable: { checkpoint_id: ids[10] } } };
    for await (const t of saver.list(threadOnly, options)) before.push(t.checkpoint.id);
    expect(before).toEqual(ids.slice(0, 10).reverse());

    const filtered: string[] = [];
    for await (const t of saver.list(threadOnly, { filter: { step: 7 } })) filtered.push(t.checkpoint.id);
    expect(filtered).toEqual([ids[7]]);
    await writer.deleteThread(thread);
  });

  test("pageSize out of range is refused when the saver is made", () => {
    expect(() => new SkialithSaver({ url: sidecar.url, pageSize: 0 })).toThrow(/pageSize must be an integer from 1 to 1000/);
    expect(() => new SkialithSaver({ url: sidecar.url, pageSize: 1001 })).toThrow(/1000/);
  });
});
