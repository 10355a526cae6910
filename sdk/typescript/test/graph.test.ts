/** A real LangGraph.js graph on SkialithSaver: invoke, interrupt + resume, time travel. */

import { AIMessage, HumanMessage, type BaseMessage } from "@langchain/core/messages";
import {
  Annotation,
  Command,
  END,
  START,
  MemorySaver,
  StateGraph,
  interrupt,
  messagesStateReducer,
} from "@langchain/langgraph";
import { SkialithSaver } from "@skialith/langgraph-checkpoint";

import { sharedSidecar } from "./support/sidecar.js";

const State = Annotation.Root({
  messages: Annotation<BaseMessage[]>({ reducer: messagesStateReducer, default: () => [] }),
  steps: Annotation<string[]>({ reducer: (a, b) => a.concat(b), default: () => [] }),
});

function build(checkpointer: SkialithSaver | MemorySaver) {
  return new StateGraph(State)
    .addNode("plan", () => ({ steps: ["plan"], messages: [new AIMessage("I will search, if you agree.")] }))
    .addNode("approve", () => {
      const answer = interrupt({ question: "search the web?" }) as string;
      return { steps: [`approve:${answer}`] };
    })
    .addNode("act", (state) => ({
      steps: ["act"],
      messages: [new AIMessage(`done after ${state.steps.length} steps`)],
    }))
    .addEdge(START, "plan")
    .addEdge("plan", "approve")
    .addEdge("approve", "act")
    .addEdge("act", END)
    .compile({ checkpointer });
}

const sidecar = sharedSidecar();
let n = 0;
const thread = () => ({ configurable: { thread_id: `graph-${process.pid}-${++n}` } });


describe("a LangGraph.js graph checkpointed through the sidecar", () => {
  it("stops at an interrupt, and another saver (another process) resumes it with Command", async () => {
    const config = thread();
    const first = build(new SkialithSaver({ url: sidecar.url }));
    const paused = await first.invoke({ messages: [new HumanMessage("find me a flight")] }, config);
    expect(paused.steps).toEqual(["plan"]);
    expect((paused as { __interrupt__?: { value: unknown }[] }).__interrupt__?.[0]?.value).toEqual({ question: "search the web?" });

    // nothing in memory carries over: a new saver and a new graph read the state back from the sidecar
    const second = build(new SkialithSaver({ url: sidecar.url }));
    const state = await second.getState(config);
    expect(state.next).toEqual(["approve"]);
    expect(state.tasks[0]?.interrupts[0]?.value).toEqual({ question: "search the web?" });
    expect(state.values.messages.map((m: BaseMessage) => [m.getType(), m.content])).toEqual([
      ["human", "find me a flight"],
      ["ai", "I will search, if you agree."],
    ]);
    expect(state.values.messages[0]).toBeInstanceOf(HumanMessage);

    const done = await second.invoke(new Command({ resume: "yes" }), config);
    expect(done.steps).toEqual(["plan", "approve:yes", "act"]);
    expect(done.messages.at(-1)?.content).toBe("done after 2 steps");
    expect((await second.getState(config)).next).toEqual([]);
  });

  it("travels back in time: replays an old checkpoint, forks it with updateState, as MemorySaver does", async () => {
    const ours = await timeTravel(build(new SkialithSaver({ url: sidecar.url })), thread());
    // newest first: act done, approve done, plan done (waiting at approve), input, the empty start
    expect(ours.history).toEqual([
      [[], 3, ["plan", "approve:yes", "act"]],
      [["act"], 2, ["plan", "approve:yes"]],
      [["approve"], 1, ["plan"]],
      [["plan"], 0, []],
      [["__start__"], -1, []],
    ]);
    // replaying from the interrupted checkpoint reuses its stored task results (the answer "yes")
    expect(ours.replayed).toEqual(["plan", "approve:yes", "act"]);
    // updateState forks the old checkpoint: a child of it, from which invoke(null) runs on
    expect(ours.forkParentIsOld).toBe(true);
    expect(ours.edited).toEqual(["plan", "edited", "act"]);
    expect(ours.latest).toEqual(["plan", "edited", "act"]);
    expect(ours.branches).toBeGreaterThan(ours.history.length);

    // exactly what LangGraph's in-memory reference saver gives for the same calls
    const reference = await timeTravel(build(new MemorySaver()), thread());
    expect(ours).toEqual(reference);
  });
});

async function timeTravel(graph: ReturnType<typeof build>, config: { configurable: { thread_id: string } }) {
  await graph.invoke({ messages: [new HumanMessage("hi")] }, config);
  await graph.invoke(new Command({ resume: "yes" }), config);
  const history = [];
  for await (const snapshot of graph.getStateHistory(config)) history.push(snapshot);
  const atApproval = history[2]!;
  const replayed = (await graph.invoke(new Command({ resume: "no" }), atApproval.config)).steps;
  const forked = await graph.updateState(atApproval.config, { steps: ["edited"] }, "approve");
  const forkState = await graph.getState(forked);
  const edited = (await graph.invoke(null, forked)).steps;
  let branches = 0;
  for await (const _ of graph.getStateHistory(config)) branches++;
  return {
    history: history.map((s) => [s.next, s.metadata?.step, s.values.steps]),
    replayed,
    forkParentIsOld: forkState.parentConfig?.configurable?.checkpoint_id === atApproval.config.configurable?.checkpoint_id,
    edited,
    latest: (await graph.getState(config)).values.steps,
    branches,
  };
}
