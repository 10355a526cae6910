/** The seed's TypeScript snippet runs verbatim against a real sidecar and stores what it says. */

import { readFileSync, readdirSync, existsSync } from "node:fs";
import { resolve } from "node:path";

import { SkialithAgent } from "@skialith/agent-core";

import { REPO_ROOT, SDK_ROOT, sharedSidecar } from "./support/sidecar.js";

const SNIPPET = resolve(SDK_ROOT, "test/seed/snippet.ts");

function snippetText(): string {
  const text = readFileSync(SNIPPET, "utf8");
  const match = /\/\/ --- snippet ---\n([\s\S]*?)\/\/ --- end of snippet ---/.exec(text);
  if (!match) throw new Error(`no snippet markers in ${SNIPPET}`);
  return match[1]!.trim();
}

/** The product pages (shared/seeds), beside the repository in CI and on developer machines. */
function seedPages(): string[] {
  for (const dir of [resolve(REPO_ROOT, "../shared/seeds"), resolve(REPO_ROOT, "../../shared/seeds"), "/work/shared/seeds"]) {
    if (existsSync(dir)) {
      return readdirSync(dir)
        .filter((name) => name.endsWith(".txt"))
        .map((name) => readFileSync(resolve(dir, name), "utf8"));
    }
  }
  return [];
}

describe("the seed's TypeScript snippet", () => {
  const sidecar = sharedSidecar();
  const saved = process.env.SKIALITH_URL;

  beforeAll(() => {
    // the snippet names no url: SKIALITH_URL points it at the test's sidecar
    process.env.SKIALITH_URL = sidecar.url;
  });
  afterAll(() => {
    if (saved === undefined) delete process.env.SKIALITH_URL;
    else process.env.SKIALITH_URL = saved;
  });

  it("is the snippet printed on the product page, character for character", (ctx) => {
    const pages = seedPages();
    if (pages.length === 0) ctx.skip("shared/seeds is not beside the repository here; the snippet file is the copy");
    expect(pages.some((page) => page.includes(snippetText()))).toBe(true);
  });

  it("runs as printed and stores its checkpoint and event", async () => {
    const run = await import("./seed/snippet.js");
    expect(run.state).toMatchObject({ stepIndex: 0, resumed: false, data: {} });

    // a second process (here: a second client) sees what the snippet stored
    const agent = new SkialithAgent({ agentId: "my-agent", url: sidecar.url });
    const state = await agent.resume();
    expect(state).toMatchObject({ stepIndex: 1, lastStep: 0, resumed: true, data: { messages: run.messages } });
    const history = await agent.history();
    expect(history.map((r) => [r.kind, r.step, r.name, r.payload])).toEqual([
      ["checkpoint", 0, "", { messages: run.messages }],
      ["event", 1, "step-1", { kind: "thought", text: "..." }],
    ]);
  });
});
