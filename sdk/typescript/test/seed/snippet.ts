// The TypeScript snippet of the product page, run as printed. The page leaves `messages` to the
// reader: this prelude defines it. The sidecar's address comes from SKIALITH_URL (set by the test).
const messages = [{ role: "user", content: "What is the capital of France?" }];

// --- snippet ---
import { SkialithAgent } from "@skialith/agent-core";

const agent = new SkialithAgent({ agentId: "my-agent" });
const state = await agent.resume();

await agent.checkpoint(state.stepIndex, { messages });
await agent.saveEvent("step-1", {
  kind: "thought", text: "..."
});
// --- end of snippet ---

export { agent, messages, state };
