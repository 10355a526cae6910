// The TypeScript rows of benchmarks/sidecar_bench.py: SkialithAgent (@skialith/agent-core) and
// SkialithSaver (@skialith/langgraph-checkpoint) as users call them, through node's fetch
// (keep-alive), against the sidecar at argv[2]. Needs the packages built (`npm run build`).
//
// Reads one JSON command a line from stdin, {"op", "n"}, runs `op` n times, each timed on its
// own, and answers one line {"ns": [...]} (nanoseconds per call); "quit" ends it.

import http from "node:http";
import { createInterface } from "node:readline";

import { SkialithAgent } from "@skialith/agent-core";
import { SkialithSaver } from "@skialith/langgraph-checkpoint";

const url = process.argv[2];
const text = "x".repeat(990); // the event's JSON is about 1 KiB, as the Python rows'
const event = { kind: "thought", text };
const agent = new SkialithAgent({ agentId: "bench-ts", url });
const saver = new SkialithSaver({ url });
const thread = { configurable: { thread_id: "bench-ts", checkpoint_ns: "" } };
let i = 0;

// a reference, not the SDK: the same checkpoint request on node:http with a keep-alive agent
const target = new URL(url);
const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 1 });
function nodeHttpCheckpoint(step) {
  const body = JSON.stringify({ step, data: event });
  return new Promise((resolve, reject) => {
    const request = http.request(
      {
        host: target.hostname,
        port: target.port,
        path: "/v1/agents/bench-ts-http/checkpoints",
        method: "POST",
        agent: keepAlive,
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) },
      },
      (response) => {
        const chunks = [];
        response.on("data", (chunk) => chunks.push(chunk));
        response.on("end", () =>
          response.statusCode === 201 ? resolve(JSON.parse(Buffer.concat(chunks).toString())) : reject(new Error(`${response.statusCode}`)),
        );
      },
    );
    request.on("error", reject);
    request.end(body);
  });
}

function checkpoint(n) {
  return {
    v: 4,
    id: `ts-${String(n).padStart(12, "0")}`,
    ts: new Date().toISOString(),
    channel_values: { messages: event },
    channel_versions: { messages: n + 1 },
    versions_seen: {},
  };
}

const ops = {
  save_event: () => agent.saveEvent(`e${i}`, event, { step: 0 }),
  checkpoint: () => agent.checkpoint(i, event),
  checkpoint_node_http: () => nodeHttpCheckpoint(i),
  put: () => saver.put(thread, checkpoint(i), { source: "loop", step: i, parents: {} }, { messages: i + 1 }),
  get_tuple: async () => {
    if ((await saver.getTuple(thread)) === undefined) throw new Error("no checkpoint to read");
  },
};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (line === "quit") break;
  const { op, n } = JSON.parse(line);
  const ns = [];
  for (let k = 0; k < n; k++, i++) {
    const t0 = process.hrtime.bigint();
    await ops[op]();
    ns.push(Number(process.hrtime.bigint() - t0));
  }
  process.stdout.write(JSON.stringify({ ns }) + "\n");
}
process.exit(0);
