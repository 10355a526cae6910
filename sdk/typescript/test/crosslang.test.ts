/**
 * One agent, two languages: what TypeScript checkpoints (through the sidecar) Python's SkialithAgent
 * resumes (straight from NATS and the read model), and the other way round.
 */

import { SkialithAgent } from "@skialith/agent-core";

import { runPython, sharedSidecar } from "./support/sidecar.js";

const sidecar = sharedSidecar();


const DATA = {
  messages: [
    { role: "user", content: "Bonjour — ça va? 🌍" },
    { role: "assistant", content: "Oui.", tool_calls: [] },
  ],
  counters: { int: 7, negative: -3, float: 0.5, big: 9007199254740991 },
  flags: [true, false, null],
  nested: { empty: {}, list: [[], [1, [2, [3]]]] },
};

// Python's SkialithAgent, configured by SKIALITH_* variables (the sidecar's NATS, stream and database)
const PYTHON_RESUME = `
import asyncio, json, os
from skialith import SkialithAgent

async def main():
    async with SkialithAgent(agent_id=os.environ["AGENT_ID"]) as agent:
        state = await agent.resume()
        records = await agent.history()
        print(json.dumps({
            "step_index": state.step_index,
            "last_step": state.last_step,
            "data": state.data,
            "history": [[r.kind, r.step, r.name, r.payload] for r in records],
        }))

asyncio.run(main())
`;

const PYTHON_WRITE = `
import asyncio, json, os
from skialith import SkialithAgent

async def main():
    data = json.loads(os.environ["DATA"])
    async with SkialithAgent(agent_id=os.environ["AGENT_ID"]) as agent:
        state = await agent.resume()
        await agent.checkpoint(step=state.step_index, data=data)
        await agent.save_event("from-python", {"kind": "thought", "text": "written in Python"})

asyncio.run(main())
`;

describe("cross-language agents", () => {
  it("an agent checkpointed from TypeScript resumes from Python with the same data", async () => {
    const agentId = `ts-to-py-${process.pid}`;
    const agent = new SkialithAgent({ agentId, url: sidecar.url });
    await agent.checkpoint(0, { partial: true });
    await agent.checkpoint(1, DATA);
    await agent.saveEvent("from-ts", { text: "written in TypeScript" });

    const out = JSON.parse(await runPython(PYTHON_RESUME, { ...sidecar.pythonEnv(), AGENT_ID: agentId }));
    expect(out.step_index).toBe(2);
    expect(out.last_step).toBe(1);
    expect(out.data).toEqual(DATA);
    expect(out.history).toEqual([
      ["checkpoint", 0, "", { partial: true }],
      ["checkpoint", 1, "", DATA],
      ["event", 2, "from-ts", { text: "written in TypeScript" }],
    ]);
  });

  it("an agent checkpointed from Python resumes from TypeScript with the same data", async () => {
    const agentId = `py-to-ts-${process.pid}`;
    const before = new SkialithAgent({ agentId, url: sidecar.url });
    await before.checkpoint(4, { from: "typescript" });

    await runPython(PYTHON_WRITE, { ...sidecar.pythonEnv(), AGENT_ID: agentId, DATA: JSON.stringify(DATA) });

    const agent = new SkialithAgent({ agentId, url: sidecar.url });
    const state = await agent.resume();
    expect(state).toMatchObject({ stepIndex: 6, lastStep: 5, resumed: true });
    expect(state.data).toEqual(DATA);
    const events = await agent.history({ kind: "event" });
    expect(events.map((r) => [r.step, r.name, r.payload])).toEqual([
      [6, "from-python", { kind: "thought", text: "written in Python" }],
    ]);
  });
});
